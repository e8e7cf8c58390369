"""The hirviz app (Hugging Face Spaces entry point): ``python app.py``.

Bundles: ``HIRVIZ_BUNDLES`` (comma-separated bundle directories or hub repo ids, the main model first), else
the embedded bundles: ``assets/demo-hir-fuse`` (CLIBD-HiR-Fuse), ``assets/demo-clibd`` (the CLIBD baseline) and
``assets/demo-hyperbolic`` (hyperbolic CLIBD, shown on the Poincare disk), the synthetic teaching demo for photos
(invented taxon names), and ``assets/real-coi``, the real COI-barcode model (real BOLD / BIOSCAN-5M barcodes,
CC BY-SA 4.0) that identifies pasted barcodes. A bundle trained without images is taken as the barcode bundle
(:func:`hirviz.ui.engine.barcode_only`). Example specimens: ``HIRVIZ_EXAMPLES`` or ``assets/examples``.

The server listens on 127.0.0.1 unless it runs on Spaces (``SPACE_ID`` set), where it must listen on 0.0.0.0;
the port is ``GRADIO_SERVER_PORT`` or 7860. Uploads and rendered images go to Gradio's temporary folder only.

Speed settings (:func:`model_settings`): ``HIRVIZ_INT8=1`` runs the models with int8 dynamic quantisation (off by
default; agreement with float32 measured in bench/README.md); ``HIRVIZ_TORCH_THREADS`` sets torch's threads per
model call (default :data:`TORCH_THREADS`).
"""

from __future__ import annotations

import logging
import os
import sys
import tempfile
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent
DEFAULT_BUNDLES: tuple[Path, ...] = (ROOT / "assets" / "demo-hir-fuse", ROOT / "assets" / "demo-clibd",
                                     ROOT / "assets" / "demo-hyperbolic", ROOT / "assets" / "real-coi")
DEFAULT_EXAMPLES = ROOT / "assets" / "examples"
MAX_UPLOAD = "50mb"  # larger photos than this are refused by the server before they reach the model
# Torch threads (per process, so per model call). The page runs up to 2 model calls at once (concurrency_id "model"
# in hirviz.ui.layout); with torch's default of one thread per core that is 4 threads on a 2-vCPU Space's 2 cores.
# bench_identify_scale.py --threads-matrix (paper-size towers, bench/README.md): on 2 cores shared with other jobs,
# 2 threads gained nothing for a lone call (738 vs 722 ms) and up to 17 % calls/s with 2 calls at once, but made
# calls about 3x slower when the cores were busier (load 13-18). One thread per call keeps each of the 2 calls on
# its own core and never oversubscribes; HIRVIZ_TORCH_THREADS=2 may suit a Space that mostly serves one user.
TORCH_THREADS = 1

logger = logging.getLogger("hirviz.app")


def bundle_sources() -> list[str]:
    """Where to load bundles from: ``HIRVIZ_BUNDLES`` (comma-separated) or the demo bundles."""
    configured = os.environ.get("HIRVIZ_BUNDLES", "")
    sources = [s.strip() for s in configured.split(",") if s.strip()]
    return sources or [str(p) for p in DEFAULT_BUNDLES]


def load_bundles(sources: list[str] | None = None) -> dict[str, Any]:
    """Open every bundle that can be opened, keyed by its name; exit with a clear message if none can.

    A bundle that fails to open is skipped with a warning, so the app still serves the others.
    """
    from hirviz import load_bundle
    from hirviz.bundle import BundleError

    sources = bundle_sources() if sources is None else sources
    bundles: dict[str, Any] = {}
    problems = []
    for source in sources:
        try:
            bundle = load_bundle(source)
        except (BundleError, OSError) as err:
            problems.append(f"  - {source}: {err}")
            continue
        name = bundle.name
        while name in bundles:  # two bundles of one name would hide each other
            name += "'"
        bundles[name] = bundle
    if not bundles:
        raise SystemExit(
            "No model bundle could be loaded:\n" + "\n".join(problems) + "\n"
            "Set HIRVIZ_BUNDLES to one or more bundle directories or hub repo ids (comma-separated, main model "
            "first), or build the demo bundles into assets/ (see the README)."
        )
    for problem in problems:
        logger.warning("skipped a bundle:\n%s", problem)
    return bundles


def server_address() -> tuple[str, int]:
    """Host and port: 0.0.0.0 only on Spaces (``SPACE_ID`` set), else 127.0.0.1; ``GRADIO_SERVER_PORT`` or 7860."""
    host = "0.0.0.0" if os.environ.get("SPACE_ID") else "127.0.0.1"
    port = os.environ.get("GRADIO_SERVER_PORT", "").strip()
    try:
        return host, int(port) if port else 7860
    except ValueError:
        raise SystemExit(f"GRADIO_SERVER_PORT must be a port number, got {port!r}") from None


def model_settings() -> tuple[bool, int]:
    """``(int8, torch threads)`` from ``HIRVIZ_INT8`` (``1``/``true``/``yes``/``on``; default off) and
    ``HIRVIZ_TORCH_THREADS`` (a whole number >= 1; default :data:`TORCH_THREADS`); exit with a clear message if
    either is unreadable."""
    flag = os.environ.get("HIRVIZ_INT8", "").strip().lower()
    if flag not in ("", "0", "1", "true", "false", "yes", "no", "on", "off"):
        raise SystemExit(f"HIRVIZ_INT8 must be 1 (on) or 0 (off), got {flag!r}")
    text = os.environ.get("HIRVIZ_TORCH_THREADS", "").strip()
    try:
        threads = int(text) if text else TORCH_THREADS
    except ValueError:
        threads = 0
    if threads < 1:
        raise SystemExit(f"HIRVIZ_TORCH_THREADS must be a whole number >= 1, got {text!r}")
    return flag in ("1", "true", "yes", "on"), threads


def build_app(sources: list[str] | None = None, examples_dir: str | Path | None = None, warm_up: bool = True):
    """The Blocks of the app on the configured bundles (warmed up, ready to launch), with :func:`model_settings`."""
    import torch

    from hirviz.ui import Engine, build_ui

    int8, threads = model_settings()
    torch.set_num_threads(threads)
    bundles = load_bundles(sources)
    engine = Engine(bundles, int8=int8)
    if warm_up:
        engine.warm_up()
    examples = Path(examples_dir or os.environ.get("HIRVIZ_EXAMPLES") or DEFAULT_EXAMPLES)
    return build_ui(bundles, examples if examples.is_dir() else None, engine=engine)


def launch(demo: Any, **overrides: Any) -> Any:
    """Queue and launch the Blocks as the app does (host and port from :func:`server_address`).

    ``overrides`` go to ``Blocks.launch`` (e.g. ``prevent_thread_lock=True`` to return at once).
    """
    from hirviz.ui import CSS

    host, port = server_address()
    options = {"server_name": host, "server_port": port, "css": CSS, "max_file_size": MAX_UPLOAD,
               "show_error": False, "footer_links": ["api", "gradio"], **overrides}
    # A bounded queue: under a flood, new requests are refused with a message instead of waiting for ever.
    return demo.queue(max_size=64, default_concurrency_limit=2).launch(**options)


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # numba (under umap-learn) may cache compiled code; keep that in the temporary folder, not beside the code.
    os.environ.setdefault("NUMBA_CACHE_DIR", str(Path(tempfile.gettempdir()) / "hirviz-numba"))
    launch(build_app())


if __name__ == "__main__":
    sys.exit(main())
