"""Export a training run as a model bundle: ``python -m train export --run RUN_DIR --out BUNDLE_DIR``.

The run directory (``python -m train fit``) gives the config, the weights and the split; the metadata is re-read
and re-split exactly as the run did (:func:`train.rundir.load_training_split`), and the split must come out the
same as the one the run saved (:func:`train.rundir.check_split`). The bundle then holds (see :mod:`hirviz.bundle`):

* the candidates: the distinct taxonomy strings of the training split, with their ranks and text embeddings;
* the reference bank: a seeded subsample of the training split (at most ``--max-reference`` specimens, every
  order and family represented while the cap allows), embedded clean in every space the model has, with a
  seeded 2-D UMAP layout of the image, DNA and fused spaces (past 50k specimens fitted on a per-taxon sample and
  the rest placed by neighbours, :mod:`hirviz.layout_scale`; Lorentz models: also a Poincare disk map of each,
  :func:`disk_layouts`, described in the bundle config's ``provenance.poincare_layout``);
* a model card (data, objective, recipe, and the accuracy tables of ``--eval`` when given) and provenance;
* ``abstention.json``: the abstention policy calibrated on half of the run's held-out rows and reported on the
  other half (:func:`train.calibrate.calibrate_bundle`; ``--no-abstention`` skips it).

``--clibd-h5`` also writes the split's embeddings in the layout of CLIBD's extracted-feature files
(``encoded_image_feature``, ``encoded_dna_feature``, ``encoded_language_feature``, ``<level>_list``,
``sampleid``, ``processid``), so other tools written for CLIBD can read them.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import logging
import subprocess
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import pandas as pd
import torch

import hirviz
from hirviz.bundle import LAYOUT_SPACES, SPACES, Reference, save_bundle
from hirviz.model import HirvizModel, build_model
from hirviz.poincare import POINCARE_LAYOUT
from hirviz.taxonomy import LEVELS, NOT_CLASSIFIED, Taxonomy
from train.config import TrainConfig, load_config
from train.data import ImageStore, open_images, specimen_ids
from train.embed import Degradation, embed_frame, embed_texts
from train.loop import load_checkpoint
from train.losses import LossConfig
from train.model_card import model_card
from train.rundir import CHECKPOINT, CONFIG, SPLIT, TAXONOMY, check_split, load_training_split, read_split

logger = logging.getLogger(__name__)

DEFAULT_MAX_REFERENCE = 3000
CLIBD_SPLITS = ("test", "train", "all")


# ----------------------------------------------------------------------------------------------------------------
# Reading a run


def load_run(run_dir: str | Path, device: str | torch.device = "cpu") -> tuple[TrainConfig, HirvizModel, dict]:
    """The run's config, its model with the checkpoint's weights (eval mode), and the checkpoint's counters."""
    run_dir = Path(run_dir)
    for name in (CONFIG, CHECKPOINT, TAXONOMY):
        if not (run_dir / name).is_file():
            raise FileNotFoundError(f"{run_dir} is not a finished run directory: no {name}")
    cfg = load_config(run_dir / CONFIG)
    ckpt = load_checkpoint(run_dir / CHECKPOINT)
    model = build_model(cfg.model)
    model.load_state_dict(ckpt["model"])
    model.to(device).eval()
    counters = {k: ckpt[k] for k in ("step", "epoch") if k in ckpt}
    return cfg, model, counters


# ----------------------------------------------------------------------------------------------------------------
# Candidates and the reference bank


def training_candidates(train: pd.DataFrame) -> tuple[list[str], list[tuple[str | None, ...]]]:
    """The distinct non-empty taxonomy strings of the training rows (sorted) and each one's ranks."""
    firsts = train[train["taxonomy"].fillna("").str.len() > 0].drop_duplicates("taxonomy").sort_values("taxonomy")
    ranks = list(firsts[list(LEVELS)].itertuples(index=False, name=None))  # names, None where unknown
    return firsts["taxonomy"].astype(str).tolist(), ranks


def select_reference(frame: pd.DataFrame, max_n: int, seed: int = 0) -> np.ndarray:
    """Sorted row positions of a seeded subsample of at most ``max_n`` rows covering every order and family.

    Rows are drawn in a random order, with one specimen of each order first, then one of each family, then the
    rest; the first ``max_n`` are kept, so coverage wins over randomness while the cap allows it.
    """
    if max_n < 1:
        raise ValueError(f"the reference needs at least one specimen, got max_n={max_n}")
    n = len(frame)
    if n <= max_n:
        return np.arange(n)
    shuffled = np.random.default_rng(seed).permutation(n)
    ranked = frame.iloc[shuffled]
    priority = np.full(n, 2)
    for tier, level in ((1, "family"), (0, "order")):
        first = (~ranked[level].duplicated() & ranked[level].notna()).to_numpy()
        priority[first] = np.minimum(priority[first], tier)
    order = np.lexsort((np.arange(n), priority))  # by tier, random within a tier
    return np.sort(shuffled[order[:max_n]])


def reference_ids(frame: pd.DataFrame) -> np.ndarray:
    """Sample ids, falling back to process ids, then to row numbers (a bank needs an id per row)."""
    ids = specimen_ids(frame)
    return np.array([i if i is not None else f"row{n}" for n, i in enumerate(ids)], dtype=str)


def build_reference(model: HirvizModel, frame: pd.DataFrame, images: ImageStore | None, taxonomy: Taxonomy,
                    umap: bool = True, seed: int = 0, batch_size: int = 256,
                    device: str | torch.device = "cpu") -> Reference:
    """Embed reference rows (clean) in every space the model and data have, with UMAP layouts."""
    emb = embed_frame(model, frame, images, Degradation(), batch_size=batch_size, device=device)
    embeddings = {space: emb[space] for space in SPACES if space in emb}
    layouts = {}
    poincare, poincare_axes = disk_layouts(model, embeddings)
    if umap:
        from hirviz.geometry import Geometry
        from hirviz.layout_scale import fit_large_layout
        from hirviz.placement import taxon_keys

        # Lorentz: UMAP (cosine metric) of the tangent-space points at the origin (log map); the disk is separate.
        to_layout = Geometry.of(model).tangent
        # A large bank is fitted on a sample stratified by genus (else family, order) and the rest placed on it.
        strata = taxon_keys(frame[list(LEVELS)].fillna("").astype(str).to_numpy())
        for space in LAYOUT_SPACES:
            if space not in embeddings:
                continue
            members = np.linalg.norm(embeddings[space], axis=1) > 0
            if members.sum() < 3:
                logger.warning("no UMAP layout of the %s space: only %d reference specimens have it",
                               space, int(members.sum()))
                continue
            layouts[space], timing = fit_large_layout(to_layout(embeddings[space]), strata, seed=seed)
            logger.info("UMAP layout of the %s space (%d points, %d fitted) in %.1f s", space, timing["points"],
                        timing["fitted"], timing["fit_s"] + timing["place_s"])
    ranks = frame[list(LEVELS)].to_numpy(dtype=object)
    return Reference(
        ids=reference_ids(frame),
        ranks=ranks,
        labels=taxonomy.encode(ranks),
        barcodes=frame["barcode"].to_numpy(dtype=object),
        embeddings=embeddings,
        has_image=emb["has_image"],
        has_dna=emb["has_dna"],
        layouts=layouts,
        poincare=poincare,
        poincare_axes=poincare_axes,
    )




def disk_layouts(model: HirvizModel, embeddings: dict[str, np.ndarray]
                 ) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """Lorentz models: each layout space's Poincare disk positions and projection axes (empty dicts otherwise).

    Cheap (a log map and an SVD), deterministic, and exact for new points, so it is computed even without UMAP.
    """
    from hirviz.geometry import Geometry
    from hirviz.poincare import fit_disk_axes, poincare_disk

    geometry = Geometry.of(model)
    disks: dict[str, np.ndarray] = {}
    axes: dict[str, np.ndarray] = {}
    if not geometry.lorentz:
        return disks, axes
    for space in LAYOUT_SPACES:
        if space not in embeddings or (np.linalg.norm(embeddings[space], axis=1) > 0).sum() < 3:
            continue
        axes[space] = fit_disk_axes(embeddings[space], geometry.curvature)
        disks[space] = poincare_disk(embeddings[space], geometry.curvature, axes[space])
    return disks, axes


# ----------------------------------------------------------------------------------------------------------------
# CLIBD-compatible embeddings


def write_clibd_h5(path: str | Path, model: HirvizModel, frame: pd.DataFrame, images: ImageStore | None,
                   batch_size: int = 256, device: str | torch.device = "cpu") -> Path:
    """Write the rows' clean embeddings in CLIBD's extracted-feature layout.

    ``encoded_image_feature`` / ``encoded_dna_feature`` (zeros where the specimen lacks the modality; see
    ``has_image`` / ``has_dna``), ``encoded_language_feature`` (each specimen's own taxonomy string), the
    labels as ``order_list`` .. ``species_list`` (``not_classified`` where unknown, as CLIBD writes them), and
    ``sampleid`` / ``processid`` (``""`` where missing). Float32 throughout.
    """
    path = Path(path)
    emb = embed_frame(model, frame, images, Degradation(), batch_size=batch_size, device=device)
    texts, text_rows = np.unique(frame["taxonomy"].fillna("").astype(str).to_numpy(), return_inverse=True)
    language = embed_texts(model, texts.tolist(), batch_size=batch_size, device=device)[text_rows]
    text = h5py.string_dtype("utf-8")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with h5py.File(tmp, "w") as h5:
        h5.attrs["format"] = "CLIBD extracted features (written by hirviz)"
        h5.attrs["embed_dim"] = model.embed_dim
        for key, name in (("image", "encoded_image_feature"), ("dna", "encoded_dna_feature")):
            if key in emb:
                h5.create_dataset(name, data=emb[key].astype(np.float32))
        h5.create_dataset("encoded_language_feature", data=language.astype(np.float32))
        h5.create_dataset("has_image", data=emb["has_image"])
        h5.create_dataset("has_dna", data=emb["has_dna"])
        for level in LEVELS:
            names = frame[level].where(frame[level].notna(), NOT_CLASSIFIED).astype(str).to_numpy(dtype=object)
            h5.create_dataset(f"{level}_list", data=names, dtype=text)
        for col in ("sampleid", "processid"):
            h5.create_dataset(col, data=frame[col].fillna("").astype(str).to_numpy(dtype=object), dtype=text)
    tmp.replace(path)
    return path


# ----------------------------------------------------------------------------------------------------------------
# Model card and provenance


def git_commit() -> str | None:
    """The commit of the code that exports (``None`` outside a git checkout)."""
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(__file__).resolve().parent,
                             capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    if out.returncode != 0:
        return None
    return out.stdout.strip() or None


def fusion_trained(loss: LossConfig) -> bool:
    """Whether training taught the fusion gate: the objective has the fusion term and its weight is not zero.

    Written into the bundle's config (``fusion_trained``); every reader of a bundle takes it from there.
    """
    return loss.uses_fusion and loss.fusion_weight > 0


# ----------------------------------------------------------------------------------------------------------------
# The export


def export(
    run_dir: str | Path,
    out_dir: str | Path,
    *,
    name: str | None = None,
    max_reference: int = DEFAULT_MAX_REFERENCE,
    umap: bool = True,
    eval_results: dict[str, Any] | None = None,
    clibd_h5: str | Path | None = None,
    clibd_split: str = "test",
    metadata: str | None = None,
    images: str | None = None,
    seed: int = 0,
    batch_size: int = 256,
    device: str | torch.device = "cpu",
    abstention: bool = True,
    index: str = "auto",
) -> Path:
    """Turn a run directory into a bundle at ``out_dir`` (see the module docstring); returns ``out_dir``.

    ``abstention``: calibrate the abstention policy on the run's held-out rows (:mod:`train.calibrate`).

    ``metadata`` / ``images`` replace the run's data paths (when the files moved since training). ``index``: the
    reference bank's search indexes (:func:`hirviz.bundle.save.save_reference`: ``auto`` saves an approximate
    FAISS index per space of 100k specimens or more, smaller banks get an exact one when opened).
    """
    if clibd_split not in CLIBD_SPLITS:
        raise ValueError(f"clibd_split must be one of {CLIBD_SPLITS}, got {clibd_split!r}")
    run_dir = Path(run_dir)
    cfg, model, counters = load_run(run_dir, device)
    if metadata is not None:
        cfg.data.metadata = metadata
    if images is not None:
        cfg.data.images = images
    frame, train_idx, test_idx = load_training_split(cfg)
    if (run_dir / SPLIT).is_file():
        check_split(read_split(run_dir), frame, cfg.data.metadata, (train_idx, test_idx), cfg)
    else:
        logger.warning("%s has no %s: cannot check that the metadata is the one the run used", run_dir, SPLIT)
    taxonomy = Taxonomy.load(str(run_dir / TAXONOMY))
    store = open_images(cfg.data.images) if cfg.data.images else None
    try:
        train = frame.iloc[train_idx].reset_index(drop=True)

        candidates, candidate_ranks = training_candidates(train)
        text_embeddings = embed_texts(model, candidates, batch_size=batch_size, device=device)
        ref_rows = select_reference(train, max_reference, seed)
        reference = build_reference(model, train.iloc[ref_rows].reset_index(drop=True), store, taxonomy, umap=umap,
                                    seed=seed, batch_size=batch_size, device=device)

        provenance = {
            "run": run_dir.resolve().name,
            "metadata": Path(cfg.data.metadata).name,
            "images": Path(cfg.data.images).name if cfg.data.images else None,
            "specimens": int(len(frame)),
            "train_specimens": int(len(train_idx)),
            "test_specimens": int(len(test_idx)),
            "reference_specimens": int(len(reference)),
            **({"poincare_layout": POINCARE_LAYOUT} if reference.poincare else {}),
            **({"curvature": float(model.curvature())} if model.geometry == "lorentz" else {}),
            "reference_seed": seed,
            "steps": counters.get("step"),
            "epochs_completed": counters.get("epoch"),
            "git_commit": git_commit(),
            "hirviz_version": hirviz.__version__,
            "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        }
        name = name or run_dir.resolve().name
        card = model_card(name, cfg, provenance, taxonomy, len(candidates), reference)
        out = save_bundle(out_dir, name=name, model=model, taxonomy=taxonomy, candidates=candidates,
                          candidate_ranks=candidate_ranks, text_embeddings=text_embeddings, reference=reference,
                          training_config=cfg.to_dict(), objective=cfg.loss.objective, provenance=provenance,
                          fusion_trained=fusion_trained(cfg.loss),
                          card=card, eval_results=eval_results, index=index)
        if abstention and len(test_idx):
            from train.calibrate import calibrate_bundle

            calibrate_bundle(out, frame.iloc[test_idx], store, seed=seed, source="the run's test split")
        if clibd_h5 is not None:
            rows = {"test": test_idx, "train": train_idx, "all": np.arange(len(frame))}[clibd_split]
            write_clibd_h5(clibd_h5, model, frame.iloc[rows].reset_index(drop=True), store, batch_size, device)
            logger.info("wrote CLIBD-style embeddings of %d %s specimens to %s", len(rows), clibd_split, clibd_h5)
    finally:
        if store is not None:
            store.close()
    return out


# ----------------------------------------------------------------------------------------------------------------
# Command line


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--run", required=True, help="run directory of `python -m train fit`")
    parser.add_argument("--out", required=True, help="bundle directory to write (an existing bundle is replaced)")
    parser.add_argument("--name", default=None, help="bundle name (default: the run directory's name)")
    parser.add_argument("--max-reference", type=int, default=DEFAULT_MAX_REFERENCE,
                        help="most training specimens in the reference bank (default %(default)s)")
    parser.add_argument("--umap", action=argparse.BooleanOptionalAction, default=True,
                        help="compute UMAP layouts of the reference bank (default: yes)")
    parser.add_argument("--eval", default=None, metavar="RESULTS_JSON",
                        help="results of `python -m train eval` to put in the bundle and its model card")
    parser.add_argument("--clibd-h5", default=None, metavar="PATH",
                        help="also write CLIBD-style embeddings (HDF5) of the split's specimens here")
    parser.add_argument("--clibd-split", choices=CLIBD_SPLITS, default="test",
                        help="which specimens --clibd-h5 holds (default %(default)s)")
    parser.add_argument("--metadata", default=None, help="the run's metadata file, when it moved since training")
    parser.add_argument("--images", default=None, help="the run's images, when they moved since training")
    parser.add_argument("--seed", type=int, default=0, help="seed of the reference subsample and UMAP")
    parser.add_argument("--abstention", action=argparse.BooleanOptionalAction, default=True,
                        help="calibrate the abstention policy on the run's held-out rows (default: yes)")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--device", default="auto", help="auto, cpu or cuda")
    parser.add_argument("--index", default="auto",
                        help="reference search index: auto (saved IVF index for 100k+ specimens), flat, large, or a "
                             "FAISS factory string such as 'HNSW32,Flat' (default %(default)s)")


def run(args: argparse.Namespace) -> int:
    if args.max_reference < 1:
        raise SystemExit(f"--max-reference must be at least 1, got {args.max_reference}")
    eval_results = None
    if args.eval:
        try:
            eval_results = json.loads(Path(args.eval).read_text(encoding="utf-8"))
        except (OSError, ValueError) as err:
            raise SystemExit(f"cannot read --eval {args.eval}: {err}") from err
    device = ("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device
    try:
        out = export(args.run, args.out, name=args.name, max_reference=args.max_reference, umap=args.umap,
                     eval_results=eval_results, clibd_h5=args.clibd_h5, clibd_split=args.clibd_split,
                     metadata=args.metadata, images=args.images, seed=args.seed, batch_size=args.batch_size,
                     device=device, abstention=args.abstention, index=args.index)
    except (FileNotFoundError, ValueError) as err:
        raise SystemExit(str(err)) from err
    print(out)
    return 0
