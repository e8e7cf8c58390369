"""Concurrent users against the app serving a bundle (e.g. the 1.1 M-specimen bank): requests, errors, latency.

    python -m bench.bench_load --bundle /tmp/hirviz-bank-bundle [--users 20] [--seconds 300] [--photo-share 0.5]
                               [--geometry-share 0.2]

Starts ``python app.py`` on 127.0.0.1 with ``HIRVIZ_BUNDLES=--bundle`` (the app's normal entry, so it opens the
bank, its saved indexes and the model exactly as a Space would), waits until it answers, then runs ``--users``
``gradio_client`` users from threads for ``--seconds`` (:func:`bench.bench_app.load_test`). Each user alternates
photo-only and barcode-only ``/identify`` calls (``--photo-share`` of them photos), with its own seed and noise per
call so that nothing can come from a cache; with ``--geometry-share`` some calls draw the Geometry tab's maps of the
user's last specimen instead (:class:`MixedCalls`). A call counts as an error when it raises (e.g. a timeout: each client
waits ``--client-timeout`` seconds on one HTTP exchange) or the app refuses it (status ``✗``). The bundle for the 1.1 M bank is written by ``python -m bench.bench_identify_scale``.

Prints a markdown table: calls, errors, throughput, p50 / p95 / max latency seen by a user, per kind and overall,
and the server's resident memory at the end. Exit status 1 if any call failed.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

from bench.bench_app import free_port, load_test, query_specimen, start_app, stop_app

REPO = Path(__file__).resolve().parents[1]


def server_memory_gb(pid: int) -> dict[str, float]:
    """VmRSS, VmHWM (peak) and RssAnon (the part not backed by files, e.g. not the memory-mapped bank) of a process
    in GB (empty off Linux)."""
    status = Path(f"/proc/{pid}/status")
    if not status.is_file():
        return {}
    fields = {}
    for line in status.read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM", "RssAnon"):
            fields[key] = int(value.split()[0]) / 1024**2
    return fields


class MixedCalls:
    """One user's call: a photo-only or barcode-only ``/identify``, or (``geometry_share`` of the calls after a user's
    first) ``/geometry``, the Geometry tab drawing the reference maps with that user's last specimen placed (in the
    space of its last input, coloured by genus, with the noise path as the tab shows it by default). Latencies are
    kept per kind."""

    def __init__(self, image: str, barcode: str, photo_share: float, geometry_share: float = 0.0) -> None:
        self.image, self.barcode, self.photo_share = image, barcode, photo_share
        self.geometry_share = geometry_share
        self.latencies: dict[str, list[float]] = {"photo": [], "barcode": [], "geometry": []}
        self._last: dict[int, str] = {}  # user -> kind of the last identify call (the session's specimen)
        self._lock = threading.Lock()

    def _maps(self, user: int, call: int) -> bool:
        return bool(call) and (user * 0.381966 + call * self.geometry_share) % 1.0 < self.geometry_share

    def kind(self, user: int, call: int) -> str:
        # Low-discrepancy patterns: the shares hold over any run of calls, and users differ. Photo or barcode goes
        # by the user's count of identify calls, so that the two patterns cannot alias.
        if self.geometry_share and self._maps(user, call):
            return "geometry"
        done = call - sum(self._maps(user, j) for j in range(call)) if self.geometry_share else call
        step = (user * 0.618034 + done * self.photo_share) % 1.0
        return "photo" if step < self.photo_share else "barcode"

    def __call__(self, client: Any, user: int, call: int) -> None:
        from gradio_client import handle_file

        kind = self.kind(user, call)
        started = time.perf_counter()
        if kind == "geometry":
            space = "image" if self._last.get(user) == "photo" else "dna"
            out = client.predict(space, "genus", True, api_name="/geometry")
            plot = out[2] if len(out) > 2 else None  # the first model's map (a failed call leaves it unset)
            if str(out[0]).startswith("✗") or not (isinstance(plot, dict) and plot.get("plot")):
                raise RuntimeError(f"geometry call failed: {str(out[0])[:200]!r}")
        else:
            out = client.predict(image=handle_file(self.image) if kind == "photo" else None,
                                 barcode=self.barcode if kind == "barcode" else "", blur_kernel=call % 4,
                                 substitution=0.01 * (call % 3), seed=user * 100_000 + call, api_name="/identify")
            # A refusal or a failure has the error icon; with random weights an answer may be "not even the order
            # is settled" (icon →), which is an answer all the same.
            if not str(out[0]) or str(out[0]).startswith("✗"):
                raise RuntimeError(f"{kind} call refused: {str(out[0])[:200]!r}")
        with self._lock:
            self.latencies[kind].append(time.perf_counter() - started)
            if kind != "geometry":
                self._last[user] = kind


def row(label: str, seconds: list[float], wall: float) -> str:
    if not seconds:
        return f"| {label} | 0 | - | - | - | - |"
    ms = np.asarray(seconds) * 1000
    return (f"| {label} | {len(ms):,} | {len(ms) / wall:.2f} | {np.percentile(ms, 50):.0f} | "
            f"{np.percentile(ms, 95):.0f} | {ms.max():.0f} |")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bundle", required=True, help="bundle directory the app serves")
    parser.add_argument("--users", type=int, default=20)
    parser.add_argument("--seconds", type=float, default=300.0)
    parser.add_argument("--photo-share", type=float, default=0.5, help="share of photo-only calls (rest: barcode)")
    parser.add_argument("--geometry-share", type=float, default=0.0,
                        help="share of calls (after each user's first) that draw the Geometry tab's maps")
    parser.add_argument("--client-timeout", type=float, default=60.0,
                        help="seconds a client waits on one HTTP exchange, e.g. the photo upload (gradio_client's "
                             "own default is 5 s; a browser waits longer)")
    parser.add_argument("--examples", default=str(REPO / "assets" / "examples"))
    args = parser.parse_args(argv)
    if (args.users < 1 or args.seconds <= 0 or not 0.0 <= args.photo_share <= 1.0
            or not 0.0 <= args.geometry_share < 1.0):
        parser.error("--users >= 1, --seconds > 0, --photo-share in [0, 1] and --geometry-share in [0, 1)")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    examples = Path(args.examples)
    image, barcode = query_specimen(examples if examples.is_dir() else None)
    port = free_port()
    log = Path(tempfile.mkdtemp(prefix="hirviz-bench-load-")) / "app.log"
    print(f"starting the app on 127.0.0.1:{port} with {args.bundle} (log: {log}) ...", file=sys.stderr)
    started = time.perf_counter()
    process = start_app(args.bundle, port, log)
    ready = time.perf_counter() - started
    calls = MixedCalls(image, barcode, args.photo_share, args.geometry_share)
    try:
        memory_before = server_memory_gb(process.pid)
        started = time.perf_counter()
        latencies, errors = load_test(f"http://127.0.0.1:{port}/", image, barcode, args.users, args.seconds,
                                      request=calls, httpx_kwargs={"timeout": args.client_timeout})
        wall = time.perf_counter() - started
        memory_after = server_memory_gb(process.pid)
    finally:
        stop_app(process)
    print(f"App answering {ready:.0f} s after start; {args.users} users for {args.seconds:g} s (all calls ended "
          f"after {wall:.0f} s); {len(latencies):,} calls answered, {len(errors)} errors; server VmRSS "
          f"{memory_before.get('VmRSS', float('nan')):.2f} GB before the load, "
          f"{memory_after.get('VmRSS', float('nan')):.2f} GB after (peak {memory_after.get('VmHWM', float('nan')):.2f}"
          f" GB; not file-backed: {memory_before.get('RssAnon', float('nan')):.2f} GB before, "
          f"{memory_after.get('RssAnon', float('nan')):.2f} GB after).\n")
    print("| calls | answered | per s | p50 ms | p95 ms | max ms |\n|---|---:|---:|---:|---:|---:|")
    print(row("photo only", calls.latencies["photo"], wall))
    print(row("barcode only", calls.latencies["barcode"], wall))
    if args.geometry_share:
        print(row("geometry (maps + star + noise path)", calls.latencies["geometry"], wall))
    print(row("**all**", latencies, wall))
    for error in errors[:10]:
        print("error:", error)
    return 1 if errors or not latencies else 0


if __name__ == "__main__":
    sys.exit(main())
