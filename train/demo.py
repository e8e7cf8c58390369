"""Rebuild the embedded demo from scratch: ``python -m train demo`` (the two Euclidean models took 20-30 minutes on
2 CPU cores; the hyperbolic one, trained alone on one thread of a shared machine, about 14 minutes more).

It runs the documented pipeline, nothing private: ``synth`` writes a synthetic benchmark, then for each demo
model (the CLIBD baseline and CLIBD-HiR-Fuse) ``fit`` trains it with ``train/configs/demo.yaml``, ``export``
makes a bundle, and ``eval`` scores the run's held-out split (clean, noisy, and a noise sweep for the app's
robustness view); the results go into the bundle's ``eval.json`` and model card. A third model, hyperbolic
CLIBD (``train/configs/hyperbolic_cpu.yaml``: Lorentz geometry, SEL entailment), is trained the same way on the
same data with a reference bank of :data:`HYPERBOLIC_REFERENCE` specimens (the assets stay small). The models
train in parallel, one CPU thread each. Finally a few held-out specimens are written to ``assets/examples`` for
the app's one-click examples. ``--only NAME`` rebuilds one bundle (the synthetic data too, not the examples).

``python -m train demo --only real-coi`` (also part of the full rebuild) makes ``assets/real-coi``, the app's real
COI-barcode bundle (:func:`build_real_coi`): ``fit`` with ``train/configs/real_dna.yaml`` on a real barcode TSV
(``--barcodes``, default ``$HIRVIZ_SHARED_DATA/real_dna/barcodes.tsv`` or ``../shared/data/real_dna/barcodes.tsv``),
``export`` with every training record in the reference bank (the barcodes the identification engine aligns to),
``eval`` on the run's held-out split, then the data licence (``LICENSE``, CC BY-SA 4.0) and the data credits in
the model card.
"""

from __future__ import annotations

import argparse
import io
import json
import logging
import shutil
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import h5py
from PIL import Image

from train.study import run_step

logger = logging.getLogger(__name__)

DEMO_CONFIG = Path(__file__).resolve().parent / "configs" / "demo.yaml"
# bundle name -> objective
MODELS = {"demo-hir-fuse": "clibd-hir-fuse", "demo-clibd": "clibd"}
REAL_COI = "real-coi"
STEPS = ("synthetic", REAL_COI)
# The hyperbolic demo: bundle name -> (config, objective, reference bank size); its config sets the geometry.
HYPERBOLIC_CONFIG = Path(__file__).resolve().parent / "configs" / "hyperbolic_cpu.yaml"
HYPERBOLIC_REFERENCE = 500  # keeps assets/ under 50 MB (the model alone is 14 MB)
HYPERBOLIC = {"demo-hyperbolic": (HYPERBOLIC_CONFIG, "clibd", HYPERBOLIC_REFERENCE)}


def build_model(name: str, objective: str, work: Path, out: Path, epochs: int | None, max_steps: int | None,
                config: Path = DEMO_CONFIG, max_reference: int = 2000) -> Path:
    """fit -> export -> eval -> attach the results: one demo bundle."""
    from hirviz.bundle import load_bundle
    from train.real_coi import halve_weights

    py = [sys.executable, "-m", "train"]
    run_dir, bundle_dir, log = work / "runs" / name, out / name, work / f"{name}.log"
    results = work / f"{name}-eval.json"
    fit = [*py, "fit", "--config", str(config), f"data.metadata={work / 'synth' / 'metadata.tsv'}",
           f"data.images={work / 'synth' / 'images.hdf5'}", f"run.out_dir={run_dir}", f"loss.objective={objective}",
           "data.num_workers=0"]
    if epochs is not None:
        fit.append(f"optim.epochs={epochs}")
    if max_steps is not None:
        fit += ["--max-steps", str(max_steps)]
    t0 = time.time()
    run_step(fit, log)
    logger.info("%s: trained in %.0f s", name, time.time() - t0)
    run_step([*py, "export", "--run", str(run_dir), "--out", str(bundle_dir), "--name", name, "--max-reference",
                str(max_reference)], log)
    # The OpenCLIP vocabulary table (49,408 x 64) is most of each file, and assets/ must stay under 50 MB. The text
    # tower is not run at inference (the candidates' text embeddings are stored in the bundle), so halving that one
    # table changes no prediction or evaluation number.
    halve_weights(bundle_dir, prefixes=("clip.token_embedding.",))
    run_step([*py, "eval", "--bundle", str(bundle_dir), "--metadata", str(work / "synth" / "metadata.tsv"),
          "--images", str(work / "synth" / "images.hdf5"), "--split", str(run_dir), "--sweep",
          "--out", str(results), "--markdown", str(results.with_suffix(".md"))], log)
    load_bundle(bundle_dir).update_eval(json.loads(results.read_text(encoding="utf-8")))
    logger.info("%s: done in %.0f s -> %s", name, time.time() - t0, bundle_dir)
    return bundle_dir


def write_examples(work: Path, run_dir: Path, out: Path, per_order: int = 2) -> Path:
    """A few fully identified held-out specimens (image + barcode) per order, for one-click examples."""
    import pandas as pd

    from train.data import read_metadata
    from train.rundir import read_split

    frame = read_metadata(work / "synth" / "metadata.tsv")
    test = frame.iloc[read_split(run_dir).test]
    known = test[test["species"].notna() & test["barcode"].notna()]
    picked = known.groupby("order", sort=True).head(per_order)
    examples = out / "examples"
    if examples.exists():
        shutil.rmtree(examples)
    examples.mkdir(parents=True)
    with h5py.File(work / "synth" / "images.hdf5", "r") as fh:
        for key in picked["image_file"]:
            Image.open(io.BytesIO(fh["bioscan_dataset"][key][()].tobytes())).save(examples / key, quality=90)
    table = pd.DataFrame({"image_file": picked["image_file"], "barcode": picked["barcode"],
                          "taxonomy": picked["taxonomy"], "sampleid": picked["sampleid"]})
    table.to_csv(examples / "examples.tsv", sep="\t", index=False)
    return examples


def demo_models() -> dict[str, tuple[Path, str, int]]:
    """Every demo bundle: name -> (config, objective, reference bank size)."""
    return {**{name: (DEMO_CONFIG, objective, 2000) for name, objective in MODELS.items()}, **HYPERBOLIC}


def build_demo(out: Path, work: Path, specimens: int, seed: int, epochs: int | None = None,
               max_steps: int | None = None, only: str | None = None) -> list[Path]:
    from train.synthetic import SynthConfig, generate

    models = demo_models()
    if only is not None:
        if only not in models:
            raise SystemExit(f"--only must name a demo bundle, one of {sorted(models)}; got {only!r}")
        models = {only: models[only]}

    work.mkdir(parents=True, exist_ok=True)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    generate(work / "synth", SynthConfig(specimens=specimens, seed=seed, image_height=128))
    logger.info("synthetic benchmark: %d specimens in %.0f s", specimens, time.time() - t0)
    with ThreadPoolExecutor(max_workers=len(models)) as pool:
        jobs = [pool.submit(build_model, name, objective, work, out, epochs, max_steps, config, reference)
                for name, (config, objective, reference) in models.items()]
        bundles = [job.result() for job in jobs]
    if only is None:
        write_examples(work, work / "runs" / next(iter(MODELS)), out)
    logger.info("demo rebuilt in %.0f s", time.time() - t0)
    return bundles


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from train.real_coi import default_barcodes

    parser.add_argument("--out", default="assets", help="where the bundles and examples go (default %(default)s)")
    parser.add_argument("--only", choices=(*STEPS, *MODELS, *HYPERBOLIC), default=None,
                        help="rebuild only the synthetic demo bundles, one of them by name (the examples are then left "
                             "as they are), or only the real COI bundle (default: all)")
    parser.add_argument("--barcodes", default=str(default_barcodes()),
                        help="real barcode TSV for the real-coi bundle (default %(default)s)")
    parser.add_argument("--threads", type=int, default=1, help="CPU threads of the real-coi step (default 1: on a busy "
                        "machine one thread trained 5x faster than two, 1.7 vs 8.5 s per step)")
    parser.add_argument("--work", default="data/demo", help="data, runs and logs (default %(default)s; not committed)")
    parser.add_argument("--specimens", type=int, default=8000, help="synthetic specimens (default %(default)s)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--epochs", type=int, default=None, help="override demo.yaml's epochs")
    parser.add_argument("--max-steps", type=int, default=None, help="stop training early (for a quick check)")


def run(args: argparse.Namespace) -> int:
    # absolute: the pipeline steps run in the repository root, not where the command was started
    out, work = Path(args.out).resolve(), Path(args.work).resolve()
    bundles = []
    if args.only != REAL_COI:  # every synthetic bundle, or the one named
        one = None if args.only in (None, "synthetic") else args.only
        bundles += build_demo(out, work, args.specimens, args.seed, args.epochs, args.max_steps, one)
    if args.only in (None, REAL_COI):
        from train.real_coi import build_real_coi

        bundles.append(build_real_coi(Path(args.barcodes).resolve(), work, out / REAL_COI,
                                      threads=args.threads, epochs=args.epochs, max_steps=args.max_steps))
    for bundle in bundles:
        print(bundle)
    return 0
