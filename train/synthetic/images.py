"""Specimen photographs: an insect drawn on a well-plate background, blurred, tinted and saved as JPEG, one
seeded stream per specimen so the images do not depend on the number of worker processes.
"""

from __future__ import annotations

import io
import multiprocessing
import os
from collections.abc import Iterator

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from train.synthetic.config import _IMAGE, SynthConfig, _rng
from train.synthetic.drawing import _SUPERSAMPLE, _Canvas, draw_specimen
from train.synthetic.looks import Look

_BACKGROUNDS: dict[int, Image.Image] = {}


def _plate_background(height: int) -> Image.Image:
    """A pale well-plate bottom with faint concentric ripples and the bright rim of the well.

    Made once per process and height, larger than any picture; each picture crops it at a random offset.
    """
    if height not in _BACKGROUNDS:
        h, w = 2 * height, 3 * height
        yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
        r = np.hypot(xx - w / 2, yy - h / 2) / height
        v = 214 + 5 * np.sin(2 * np.pi * r * 5.5) * np.exp(-r) - 12 * r**2
        v += 24 * np.exp(-(((r - 0.9) / 0.06) ** 2)) - 40 * np.exp(-(((r - 0.97) / 0.012) ** 2))
        v += np.random.default_rng(0).normal(0, 1.5, size=v.shape)  # fixed grain: same in every process
        rgb = np.stack([v * 0.955, v * 0.985, v * 1.0 + 4], axis=-1)
        _BACKGROUNDS[height] = Image.fromarray(np.clip(rgb, 0, 255).astype(np.uint8))
    return _BACKGROUNDS[height]


def _debris(draw: ImageDraw.ImageDraw, size: tuple[int, int], rng: np.random.Generator) -> None:
    """A few fibres and specks on the plate, as in real photographs."""
    w, h = size
    for _ in range(int(rng.poisson(1.2))):
        x, y = rng.uniform(0, w), rng.uniform(0, h)
        dx, dy = rng.normal(0, h * 0.05, size=2)
        shade = int(rng.integers(90, 170))
        draw.line([x, y, x + dx, y + dy], fill=(shade, shade, shade, 140), width=max(1, h // 200))
    # specks of dust and scales as small as the species' spots: fine detail that says nothing about the taxon
    for _ in range(int(rng.poisson(2.5))):
        x, y, r = rng.uniform(0, w), rng.uniform(0, h), rng.uniform(0.004, 0.012) * h
        shade = int(rng.integers(60, 200))
        draw.ellipse([x - r, y - r, x + r, y + r], fill=(shade, shade, shade, 170))


def render_image(look: Look, height: int, quality: int, rng: np.random.Generator) -> bytes:
    """JPEG bytes of one specimen of ``look``, about 4:3 and ``height`` pixels high."""
    width = int(round(height * rng.uniform(1.1, 1.45)))
    big_h, big_w = height * _SUPERSAMPLE, width * _SUPERSAMPLE
    plate = _plate_background(big_h)
    left = int((plate.width - big_w) / 2 + rng.uniform(-0.3, 0.3) * big_w)
    top = int((plate.height - big_h) / 2 + rng.uniform(-0.3, 0.3) * big_h)
    image = plate.crop((left, top, left + big_w, top + big_h))
    center = (big_w * rng.uniform(0.42, 0.58), big_h * rng.uniform(0.42, 0.58))
    cv = _Canvas(image, center, length=big_h * float(rng.uniform(0.62, 0.9)), angle=float(rng.uniform(0, 2 * np.pi)))
    _debris(cv.draw, image.size, rng)
    draw_specimen(cv, look, rng)
    image = image.reduce(_SUPERSAMPLE)
    # Focus varies: about half the photos are sharp, some soft, a few badly blurred. A single box pass
    # costs a third of PIL's Gaussian and looks the same at these radii.
    soft, blurry = rng.random() < 0.5, rng.random() < 0.08
    if soft or blurry:
        radius = rng.uniform(0.3, 0.8) * (3.0 if blurry else 1.0) * height / 256
        image = image.filter(ImageFilter.BoxBlur(radius))
    gain = rng.uniform(0.9, 1.06) * np.array([rng.uniform(0.97, 1.03), 1.0, rng.uniform(0.97, 1.04)])
    lut = np.clip(np.arange(256)[None, :] * gain[:, None], 0, 255).astype(np.uint8).ravel().tolist()
    image = image.point(lut)
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=quality)
    return buffer.getvalue()


# Worker state, set once per process by the pool initializer (or directly when running inline).
_WORKER: dict = {}


def _init_worker(looks: list[Look], seed: int, height: int, quality: int) -> None:
    _WORKER.update(looks=looks, seed=seed, height=height, quality=quality)


def _render_task(task: tuple[int, int]) -> bytes:
    index, species = task
    rng = _rng(_WORKER["seed"], _IMAGE, index)
    return render_image(_WORKER["looks"][species], _WORKER["height"], _WORKER["quality"], rng)


def render_images(looks: list[Look], species: np.ndarray, config: SynthConfig) -> Iterator[bytes]:
    """JPEG bytes of every specimen, in order; each from its own (seed, index) stream."""
    tasks = list(enumerate(species.tolist()))
    workers = config.workers or os.cpu_count() or 1
    init_args = (looks, config.seed, config.image_height, config.jpeg_quality)
    if workers <= 1 or len(tasks) < 64:
        _init_worker(*init_args)
        yield from map(_render_task, tasks)
        return
    chunk = max(8, min(256, len(tasks) // (workers * 16)))
    with multiprocessing.get_context().Pool(workers, initializer=_init_worker, initargs=init_args) as pool:
        yield from pool.imap(_render_task, tasks, chunksize=chunk)
