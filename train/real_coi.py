"""The app's real COI-barcode bundle (``assets/real-coi``): ``python -m train demo --only real-coi``.

:func:`build_real_coi` runs the documented commands in this process (``torch`` on ``threads`` CPU threads):

1. ``fit`` with ``train/configs/real_dna.yaml`` on a real barcode TSV (its BPE vocabulary is trained on the
   training split and travels in the bundle);
2. ``export`` with *every* training record in the reference bank: ids (BOLD process ids), taxonomy and barcodes,
   which :class:`hirviz.coi_refs.ReferenceSet` aligns queries to. The bundle is committed, so it is then made
   small without changing what it holds: float16 weights (:func:`halve_weights`) and a gzip-compressed
   ``reference.h5`` with float16 embeddings (:func:`compact_reference`); loading casts both back to float32;
3. ``eval`` of the shipped bundle on the run's held-out split (clean, noisy and a DNA-noise sweep), written into
   ``eval.json`` and the model card;
4. the data's licence and credits (:func:`write_data_notice`): ``LICENSE`` (CC BY-SA 4.0, which the BOLD data
   packages require of derived data) and a credits section in the model card, with the BOLD data-package
   releases read from the TSV's ``source`` column.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import time
from pathlib import Path

import pandas as pd

logger = logging.getLogger(__name__)

ROOT = Path(__file__).resolve().parent.parent
REAL_CONFIG = ROOT / "train" / "configs" / "real_dna.yaml"
LICENCE_TEXT = ROOT / "train" / "licenses" / "CC-BY-SA-4.0.txt"
BUNDLE_NAME = "real-coi"
CREDITS_HEADING = "## Data, credits and licence"


def default_barcodes() -> Path:
    """``$HIRVIZ_SHARED_DATA/real_dna/barcodes.tsv``, else ``../shared/data/real_dna/barcodes.tsv``."""
    # Relative to where the command runs (the repository root): the path is recorded in the committed bundle's
    # config and eval.json, which must not name the machine it was built on.
    shared = os.environ.get("HIRVIZ_SHARED_DATA") or os.path.relpath(ROOT.parent / "shared" / "data")
    return Path(shared) / "real_dna" / "barcodes.tsv"


def _train_cli(*argv: str) -> None:
    from train.__main__ import main

    logger.info("$ python -m train %s", " ".join(argv))
    status = main(list(argv))
    if status:
        raise RuntimeError(f"python -m train {argv[0]} failed with status {status}")


def build_real_coi(barcodes: Path, work: Path, out: Path, threads: int = 1, epochs: int | None = None,
                   max_steps: int | None = None) -> Path:
    """Train, export, evaluate and license the real COI bundle at ``out`` (see the module docstring)."""
    import torch

    if not barcodes.is_file():
        raise SystemExit(f"real barcode TSV not found: {barcodes} (pass --barcodes or set HIRVIZ_SHARED_DATA)")
    if threads < 1:
        raise SystemExit(f"--threads must be >= 1, got {threads}")
    torch.set_num_threads(threads)
    run_dir = work / "runs" / BUNDLE_NAME
    if run_dir.exists():
        shutil.rmtree(run_dir)  # from scratch: a stale checkpoint would otherwise be resumed
    started = time.time()
    fit = ["fit", "--config", str(REAL_CONFIG), f"data.metadata={barcodes}", f"run.out_dir={run_dir}"]
    if epochs is not None:
        fit.append(f"optim.epochs={epochs}")
    if max_steps is not None:
        fit += ["--max-steps", str(max_steps)]
    _train_cli(*fit)
    logger.info("%s: trained in %.0f s", BUNDLE_NAME, time.time() - started)
    package_real_coi(run_dir, barcodes, work, out, threads)
    logger.info("%s: done in %.0f s -> %s", BUNDLE_NAME, time.time() - started, out)
    return out


def package_real_coi(run_dir: Path, barcodes: Path, work: Path, out: Path, threads: int = 1) -> Path:
    """Steps 2-4 of the module docstring for a finished run."""
    from hirviz.bundle import load_bundle

    rows = len(pd.read_csv(barcodes, sep="\t", usecols=["processid"]))
    _train_cli("export", "--run", str(run_dir), "--out", str(out), "--name", BUNDLE_NAME,
               "--max-reference", str(max(rows, 1)))
    halve_weights(out)
    compact_reference(out)
    results = work / f"{BUNDLE_NAME}-eval.json"
    _train_cli("eval", "--bundle", str(out), "--metadata", str(barcodes), "--split", str(run_dir), "--sweep",
               "--threads", str(threads), "--out", str(results), "--markdown", str(results.with_suffix(".md")))
    load_bundle(out).update_eval(json.loads(results.read_text(encoding="utf-8")))
    write_data_notice(out, barcodes)
    return out


def halve_weights(bundle_dir: Path, prefixes: tuple[str, ...] = ("",)) -> None:
    """Store the bundle's float32 weights as float16 (same tensor names; the loader casts them back).

    ``prefixes`` limits it to the tensors whose names start with one of them (default: every tensor).
    """
    import torch
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    path = bundle_dir / "model.safetensors"
    with safe_open(str(path), "pt") as fh:
        metadata = fh.metadata()
    tensors = {k: v.half() if v.dtype == torch.float32 and k.startswith(prefixes) else v
               for k, v in load_file(str(path)).items()}
    tmp = path.with_suffix(".tmp")
    save_file(tensors, str(tmp), metadata=metadata)
    os.replace(tmp, path)


def compact_reference(bundle_dir: Path) -> None:
    """Rewrite ``reference.h5`` compressed: strings as gzip-compressed fixed-length UTF-8 bytes (barcodes shrink
    about 6x), embeddings as float16, everything else as is. :meth:`hirviz.bundle.Reference.load` reads it alike."""
    import h5py
    import numpy as np

    path = bundle_dir / "reference.h5"
    tmp = path.with_suffix(".tmp")
    with h5py.File(path, "r") as src, h5py.File(tmp, "w") as out:
        out.attrs.update(dict(src.attrs))

        def copy(name: str, obj: object) -> None:
            if not isinstance(obj, h5py.Dataset):
                return
            data = obj[()]
            if obj.dtype.kind == "O":  # variable-length strings: their heap is not compressed by HDF5 filters
                data = np.char.encode(obj.asstr()[()].astype(str), "utf-8")
            elif name.startswith("embeddings/") and data.dtype == np.float32:
                data = data.astype(np.float16)
            out.create_dataset(name, data=data, compression="gzip", compression_opts=9)

        src.visititems(copy)
    os.replace(tmp, path)


def data_packages(barcodes: Path) -> dict[str, int]:
    """BOLD public data-package releases named in the TSV's ``source`` column, with their record counts."""
    sources = pd.read_csv(barcodes, sep="\t", usecols=["source"], dtype=str, keep_default_na=False)["source"]
    found = sources.str.extract(r"BOLD_Public\.(\d{1,2}-[A-Za-z]{3}-\d{4})", expand=False).dropna()
    # The same release is spelt 24-JAN-2025 and 24-Jan-2025 in different sources.
    found = found.map(lambda d: re.sub(r"-([A-Za-z]{3})-", lambda m: f"-{m.group(1).title()}-", d))
    counts = found.value_counts()
    return {d: int(counts[d]) for d in sorted(counts.index, key=lambda d: pd.to_datetime(d, format="%d-%b-%Y"))}


def source_counts(barcodes: Path) -> dict[str, int]:
    """Records per original source: BOLD data packages, BOLD dataset DS-PBBC4, BIOSCAN-5M."""
    sources = pd.read_csv(barcodes, sep="\t", usecols=["source"], dtype=str, keep_default_na=False)["source"]
    kinds = {"bold_packages": sources.str.contains("BOLD public data package"),
             "ds_pbbc4": sources.str.contains("DS-PBBC4"), "bioscan5m": sources.str.contains("BIOSCAN-5M")}
    return {k: int(v.sum()) for k, v in kinds.items()}


def credits_markdown(barcodes: Path) -> str:
    """The model card's credits section for a bundle trained on ``barcodes``."""
    counts = source_counts(barcodes)
    packages = "; ".join(f"BOLD_Public.{d} (DOI [10.5883/DP-BOLD_Public.{d}](https://doi.org/10.5883/DP-BOLD_Public.{d}),"
                         f" {n} record{'s' * (n != 1)})" for d, n in data_packages(barcodes).items())
    return "\n".join([
        CREDITS_HEADING,
        "",
        "Real, public COI-5P barcodes of insects. The reference bank (`reference.h5`) holds the training records "
        "themselves (BOLD process id, order, family, genus, species, barcode) so that a query can be aligned to "
        "them; the model was trained on them. Record counts are of the whole table: 80 % of it trained the model "
        "and is the reference bank, 20 % was held out for the evaluation above. Sources:",
        "",
        f"- **BOLD Systems public data packages** ({counts['bold_packages']} records, curated identifications), "
        f"excerpts as shipped in the test data of "
        "[naturalis/barcode-constrained-phylogeny](https://github.com/naturalis/barcode-constrained-phylogeny) and "
        f"[NaturalHistoryMuseum/ukbol](https://github.com/NaturalHistoryMuseum/ukbol): {packages}. "
        "Licensed CC BY-SA 4.0 by the Centre for Biodiversity Genomics / BOLD Systems (boldsystems.org).",
        f"- **BOLD dataset DS-PBBC4** (Costa Rica; {counts['ds_pbbc4']} records), as shipped in the examples of "
        "[DMnBI/DeepCOI](https://github.com/DMnBI/DeepCOI); only the deepest taxon was given, higher ranks were "
        "derived from a genus -> family -> order map, so some ranks are empty.",
        f"- **BIOSCAN-5M** ({counts['bioscan5m']} records; Gharaee et al. 2024, Centre for Biodiversity Genomics, "
        "CC BY 3.0).",
        "",
        "**Licence**: this bundle (weights, reference bank, card) is a derivative of the data above and is "
        "shared under **CC BY-SA 4.0** (see `LICENSE`), as the BOLD data packages require; the BIOSCAN-5M records "
        "remain under CC BY 3.0 (attribution: CBG). The code that made it (hirviz) is MIT-licensed.",
        "",
    ])


def write_data_notice(bundle_dir: Path, barcodes: Path) -> None:
    """Write ``LICENSE`` (attribution + the CC BY-SA 4.0 legal code) and the credits section of the card."""
    from hirviz.bundle.files import atomic_write_text

    notice = (
        f"The {BUNDLE_NAME} bundle (model weights, reference.h5, README.md) is derived from public DNA barcode "
        "records of BOLD Systems (public data packages, DOI 10.5883/DP-BOLD_Public.<date>, and dataset DS-PBBC4) "
        "and BIOSCAN-5M (CC BY 3.0, Centre for Biodiversity Genomics). See README.md for the full credits.\n\n"
        "It is licensed under the Creative Commons Attribution-ShareAlike 4.0 International licence "
        "(https://creativecommons.org/licenses/by-sa/4.0/legalcode), whose text follows.\n\n"
        + "=" * 71 + "\n\n"
    )
    atomic_write_text(bundle_dir / "LICENSE", notice + LICENCE_TEXT.read_text(encoding="utf-8"))
    card_path = bundle_dir / "README.md"
    card = card_path.read_text(encoding="utf-8")
    if CREDITS_HEADING in card:
        card = card[:card.index(CREDITS_HEADING)].rstrip("\n") + "\n"
    title = f"# {BUNDLE_NAME}\n"
    summary = ("\n**Real data**: trained on real public COI barcodes of insects (BOLD Systems, BIOSCAN-5M); "
               "licensed CC BY-SA 4.0 (see `LICENSE` and the credits below). DNA + taxonomy text only: its image "
               "tower was never trained, so it answers barcodes, not photographs. Its DNA vocabulary (4,096 BPE "
               "tokens learnt from the training barcodes) is `dna_tokenizer.json`. In the hirviz app and "
               "`python -m hirviz identify` it backs the COI identification engine: the reference bank's barcodes "
               "are aligned to a query, and the model names the ranks no reference is close enough to decide.\n")
    card = "\n".join(line for line in card.split("\n") if not line.startswith("**Real data**:"))
    card = re.sub(r"\n{3,}", "\n\n", card)
    if title in card:
        card = card.replace(title, title + summary, 1)
    atomic_write_text(card_path, card.rstrip("\n") + "\n\n" + credits_markdown(barcodes))
