"""Regenerate the README's screenshots: every tab of the app at desktop (1,280 px) and phone (390 px) width.

    python bench/screenshots.py [--out docs/screenshots] [--chromium /usr/bin/chromium]

The app is built as it ships (``app.py``'s bundles and examples), launched on a free 127.0.0.1 port and driven by
Playwright with the system's Chromium. On the Identify tab a synthetic example specimen is identified first (photo
+ barcode, sent to the demo models), so the pictures show a result. Each PNG is reduced to a palette image and, if
still over :data:`MAX_BYTES`, cut to its top part, so the repository stays small.
"""

from __future__ import annotations

import argparse
import importlib.util
import io
import os
import socket
import sys
from pathlib import Path

import pandas as pd
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # this checkout's hirviz, also when run as a script
MAX_BYTES = 300_000
WIDTHS = {"desktop": (1280, 900), "phone": (390, 844)}
TABS = ("Identify", "Plate (several photos)", "Batch barcodes", "Geometry", "Robustness", "About")
TIMEOUT_MS = 120_000


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _load_app():
    spec = importlib.util.spec_from_file_location("hirviz_app", ROOT / "app.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def save_small(png: bytes, path: Path, max_bytes: int = MAX_BYTES) -> int:
    """Write a screenshot as a palette PNG under ``max_bytes`` (fewer colours, then a shorter crop); its size."""
    image = Image.open(io.BytesIO(png)).convert("RGB")
    for colours, height in ((128, image.height), (64, image.height), (64, 3000), (32, 2400), (32, 1600)):
        crop = image.crop((0, 0, image.width, min(height, image.height)))
        buffer = io.BytesIO()
        crop.quantize(colors=colours, method=Image.Quantize.MEDIANCUT).save(buffer, format="PNG", optimize=True)
        if buffer.tell() <= max_bytes:
            break
    path.write_bytes(buffer.getvalue())
    return buffer.tell()


def _identify_example(page, examples_dir: Path) -> None:
    table = pd.read_csv(examples_dir / "examples.tsv", sep="\t", dtype=str)
    page.get_by_role("button", name=table.taxonomy[0], exact=True).first.click()
    page.wait_for_function("document.querySelector('#hz-status').innerText.includes('Identified')",
                           timeout=TIMEOUT_MS)
    page.wait_for_timeout(1500)  # let the plots draw


def _open_tab(page, name: str) -> None:
    """Click a tab's button, also when a narrow screen moved it into the tab bar's overflow menu."""
    tab = page.get_by_role("tab", name=name)
    if tab.count() and tab.first.is_visible():
        tab.first.click()
        return
    page.click("button[aria-label='More tabs']")
    page.locator(".overflow-dropdown button", has_text=name).first.click()


def take(out: Path, chromium: str) -> list[tuple[str, int]]:
    """Launch the app, take every screenshot into ``out``; returns (file name, bytes) pairs."""
    from playwright.sync_api import sync_playwright

    app = _load_app()
    port = _free_port()
    os.environ.pop("SPACE_ID", None)
    os.environ["GRADIO_SERVER_PORT"] = str(port)
    demo = app.build_app()
    app.launch(demo, prevent_thread_lock=True, quiet=True)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    try:
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=chromium,
                                                 args=["--headless", "--no-sandbox", "--disable-gpu"])
            for label, (width, height) in WIDTHS.items():
                page = browser.new_page(viewport={"width": width, "height": height}, device_scale_factor=1)
                page.set_default_timeout(TIMEOUT_MS)
                page.goto(f"http://127.0.0.1:{port}/")
                page.wait_for_selector("#hz-identify")
                _identify_example(page, app.DEFAULT_EXAMPLES)
                for tab in TABS:
                    _open_tab(page, tab)
                    if tab == "Geometry":
                        page.wait_for_selector("#hz-map-0 .js-plotly-plot")
                    if tab.startswith("Plate"):  # the example photos as a plate
                        page.set_input_files("#hz-plate-files input[type=file]",
                                             sorted(str(p) for p in app.DEFAULT_EXAMPLES.glob("*.jpg")))
                        page.click("#hz-plate-run")
                        page.wait_for_function("document.querySelector('#hz-plate-status').innerText.includes("
                                               "'Identified')")
                    page.wait_for_timeout(1500)
                    name = f"{tab.lower().replace(' (', '-').replace(')', '').replace(' ', '-')}-{label}.png"
                    written.append((name, save_small(page.screenshot(full_page=True), out / name)))
                page.close()
            browser.close()
    finally:
        demo.close()
    return written


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "screenshots")
    parser.add_argument("--chromium", default=os.environ.get("HIRVIZ_CHROMIUM", "/usr/bin/chromium"))
    args = parser.parse_args(argv)
    for name, size in take(args.out, args.chromium):
        print(f"{args.out / name}: {size / 1000:.0f} kB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
