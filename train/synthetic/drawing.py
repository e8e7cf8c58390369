"""Drawing one insect of a :class:`~train.synthetic.looks.Look` on a canvas, in the insect's own frame."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw

from train.synthetic.looks import Color, FamilyLook, Look, OrderPlan, _byte, _shade

_SUPERSAMPLE = 2  # draw at twice the size and reduce: cheap anti-aliasing
_CIRCLE = np.exp(2j * np.pi * np.arange(24) / 24)


class _Canvas:
    """Draws shapes given in the insect's own frame (x forward, y to its left, body length 1)."""

    def __init__(self, image: Image.Image, center: tuple[float, float], length: float, angle: float) -> None:
        self.draw = ImageDraw.Draw(image, "RGBA")
        self.center = complex(*center)
        self.rot = length * np.exp(1j * angle)
        self.length = length
        self.height = image.height

    def image_heights(self, size: float) -> float:
        """A size given in image heights (a fixed magnification, like the plate camera's) in body lengths."""
        return size * self.height / self.length

    def from_image(self, offset: complex) -> complex:
        """An offset fixed in the picture (x right, y down; body lengths) in the insect's frame."""
        return offset * self.length / self.rot

    def _px(self, z: np.ndarray) -> list[float]:
        # complex128 viewed as float64 pairs is exactly PIL's flat [x0, y0, x1, y1, ...]
        return np.ascontiguousarray(self.center + self.rot * np.asarray(z, dtype=complex)).view(np.float64).tolist()

    def ellipse(self, x: float, y: float, rx: float, ry: float, fill: Sequence[int], angle: float = 0.0,
                outline: Sequence[int] | None = None) -> None:
        z = complex(x, y) + (rx * _CIRCLE.real + 1j * ry * _CIRCLE.imag) * np.exp(1j * np.radians(angle))
        self.draw.polygon(self._px(z), fill=tuple(fill), outline=None if outline is None else tuple(outline))

    def line(self, points: Sequence[complex], width: float, fill: Sequence[int]) -> None:
        self.draw.line(self._px(np.asarray(points)), fill=tuple(fill), width=max(1, round(width * self.length)),
                       joint="curve")


@dataclass(frozen=True)
class _Body:
    """Where the parts of one specimen lie along its axis (relative units, head at +x)."""

    head_x: float
    head: tuple[float, float]  # half length, half width
    thorax_x: float
    thorax: tuple[float, float]
    waist_x: float
    waist: float
    abdomen_start: float
    abdomen: tuple[float, float]  # length, half width


def _layout(plan: OrderPlan, family: FamilyLook, stretch: float) -> _Body:
    """Stack head, thorax, waist and abdomen along the axis and scale the whole to length 1."""
    hl, hw = plan.head[0], plan.head[1] * family.head_scale
    tl, tw = plan.thorax[0], plan.thorax[1] * family.width_scale
    al, aw = plan.abdomen[0] * family.length_scale * stretch, plan.abdomen[1] * family.width_scale
    total = hl + tl + plan.waist + al
    s = 1.0 / total
    front = 0.5
    return _Body(
        head_x=front - hl * s / 2, head=(hl * s / 2, hw * s / 2),
        thorax_x=front - (hl + tl / 2) * s, thorax=(tl * s / 2 * 1.08, tw * s / 2),
        waist_x=front - (hl + tl + plan.waist / 2) * s, waist=plan.waist * s / 2,
        abdomen_start=front - (hl + tl + plan.waist) * s, abdomen=(al * s, aw * s / 2),
    )


@dataclass(frozen=True)
class _Pose:
    """Per-specimen variation that says nothing about the taxon."""

    leg_angles: np.ndarray  # [3 pairs, 2 sides, 2 joints] degrees of jitter
    antenna_angles: np.ndarray  # [2]
    spread: float
    missing_legs: frozenset[int]
    tint: np.ndarray  # [3]


def _tinted(color: Sequence[int], tint: Sequence[float]) -> Color:
    return tuple(_byte(c + t) for c, t in zip(color, tint))  # type: ignore[return-value]


def _draw_legs(cv: _Canvas, look: Look, body: _Body, pose: _Pose) -> None:
    # femur and tibia directions (degrees from the forward axis) of the front, middle and hind legs
    femur, tibia = (50.0, 88.0, 122.0), (22.0, 118.0, 152.0)
    length = look.plan.legs
    color = _tinted(look.family.legs, pose.tint)
    for pair, (f_deg, t_deg, share) in enumerate(zip(femur, tibia, (0.8, 0.9, 1.1))):
        base_x = body.thorax_x + body.thorax[0] * (0.35 - 0.35 * pair)
        for side, sign in enumerate((1.0, -1.0)):
            if pair * 2 + side in pose.missing_legs:
                continue
            jf, jt = pose.leg_angles[pair, side]
            base = complex(base_x, sign * body.thorax[1] * 0.5)
            knee = base + 0.42 * length * share * np.exp(1j * sign * np.radians(f_deg + jf))
            foot = knee + 0.58 * length * share * np.exp(1j * sign * np.radians(t_deg + jt))
            cv.line([base, knee, foot], look.plan.leg_width, color)


def _draw_antennae(cv: _Canvas, look: Look, body: _Body, pose: _Pose) -> None:
    length = look.plan.antenna
    color = _shade(_tinted(look.family.legs, pose.tint), 0.8)
    front = body.head_x + body.head[0] * 0.7
    for side, sign in enumerate((1.0, -1.0)):
        base = complex(front, sign * body.head[1] * 0.35)
        angle = np.radians(28 + pose.antenna_angles[side])
        if look.plan.elbowed:
            elbow = base + 0.3 * length * np.exp(1j * sign * angle * 0.4)
            tip = elbow + 0.7 * length * np.exp(1j * sign * angle * 1.9)
            points = [base, elbow, tip]
        else:
            mid = base + 0.5 * length * np.exp(1j * sign * angle)
            points = [base, mid, mid + 0.5 * length * np.exp(1j * sign * angle * 1.35)]
        cv.line(points, look.plan.leg_width * 0.6, color)


def _wing(cv: _Canvas, base: complex, length: float, width: float, angle_deg: float, fill: Sequence[int],
          outline: Sequence[int] | None, veins: int) -> None:
    direction = np.exp(1j * np.radians(angle_deg))
    center = base + direction * length / 2
    cv.ellipse(center.real, center.imag, length / 2, width / 2, fill, angle=angle_deg, outline=outline)
    if veins and outline is not None:
        # the species' venation: veins about one model-input pixel wide, so a blur erases them
        spread = np.linspace(-0.5, 0.5, veins) * np.degrees(np.arctan(width / length))
        for d in spread:
            cv.line([base, base + 0.85 * length * np.exp(1j * np.radians(angle_deg + d))], cv.image_heights(0.012),
                    outline)


def _draw_wings(cv: _Canvas, look: Look, body: _Body, pose: _Pose, layer: str) -> None:
    """Membranous wings lie over the body (``layer="over"``); scaled wings under it."""
    kind = look.plan.wings
    if kind == "none" or (layer == "under") != (kind == "scaled"):
        return
    length, width = look.plan.wing
    spread = look.plan.spread + pose.spread
    base_x = body.thorax_x - body.thorax[0] * 0.1
    for sign in (1.0, -1.0):
        base = complex(base_x, sign * body.thorax[1] * 0.45)
        if kind == "scaled":
            color = _tinted(look.family.secondary, pose.tint)
            _wing(cv, base, length * 0.72, width, 180 - sign * (spread + 28), _shade(color, 0.85), None, 0)
            _wing(cv, base, length, width * 0.8, 180 - sign * spread, color, _shade(color, 0.7), 0)
            band = base + 0.62 * length * np.exp(1j * np.radians(180 - sign * spread))
            cv.ellipse(band.real, band.imag, length * 0.07 * look.family.pattern_size, width * 0.32,
                       look.family.pattern_color + (200,), angle=180 - sign * spread)
        elif kind == "elytra":
            continue  # drawn as part of the body
        else:
            tint = look.family.wing_tint
            outline = (*_shade(tint[:3], 0.55), min(255, tint[3] + 90))
            if kind == "double":
                _wing(cv, base, length * 0.72, width * 0.8, 180 - sign * (spread + 14), tint, outline, 2)
            if kind == "hemi":
                _wing(cv, base, length, width, 180 - sign * spread, tint, outline, 0)
                color = _tinted(look.family.secondary, pose.tint) + (255,)
                _wing(cv, base, length * 0.62, width * 0.92, 180 - sign * spread, color, _shade(color[:3], 0.7), 0)
            else:
                _wing(cv, base, length, width, 180 - sign * spread, tint, outline, look.detail.veins)


def _abdomen_segments(body: _Body, plan: OrderPlan) -> list[tuple[float, float, float]]:
    """(centre x, half length, half width) of each abdominal segment, tip first."""
    length, half_width = body.abdomen
    n = plan.segments
    out = []
    for i in reversed(range(n)):
        t = (i + 0.5) / n
        profile = (0.75 + 0.25 * math.sin(math.pi * min(1.0, 0.25 + t))) * (1 - plan.taper * t**2)
        out.append((body.abdomen_start - t * length, length / n * (0.75 if n > 1 else 0.5), half_width * profile))
    return out


def _draw_body(cv: _Canvas, look: Look, body: _Body, pose: _Pose) -> None:
    plan, fam = look.plan, look.family
    main = _tinted(fam.body, pose.tint)
    secondary = _tinted(fam.secondary, pose.tint)
    # a soft shadow under the body, as the specimen lies on the plate
    shadow, off = (0, 0, 0, 26), cv.from_image(0.02 + 0.03j)
    cv.ellipse(body.abdomen_start - body.abdomen[0] / 2 + off.real, off.imag, body.abdomen[0] / 2,
               body.abdomen[1] * 1.1, shadow)
    cv.ellipse(body.thorax_x + off.real, off.imag, body.thorax[0], body.thorax[1] * 1.1, shadow)
    for i, (x, hl, hw) in enumerate(_abdomen_segments(body, plan)):
        banded = fam.pattern == "bands" and plan.segments > 1 and i % 2 == 1
        color = fam.pattern_color if banded else _shade(main, 0.9 if i % 2 else 1.0)
        cv.ellipse(x, 0.0, hl, hw, color, outline=_shade(color, 0.7))
    if plan.waist > 0:
        cv.ellipse(body.waist_x, 0.0, body.waist * 1.4, body.thorax[1] * 0.25, _shade(main, 0.8))
    if plan.wings == "elytra":
        _draw_elytra(cv, body, secondary)
    _draw_pattern(cv, look, body)
    thorax_color = fam.pattern_color if fam.pattern == "saddle" else secondary
    cv.ellipse(body.thorax_x, 0.0, body.thorax[0], body.thorax[1], thorax_color, outline=_shade(thorax_color, 0.65))
    cv.ellipse(body.head_x, 0.0, body.head[0], body.head[1], main, outline=_shade(main, 0.65))
    eye = plan.eye * body.head[1]
    for sign in (1.0, -1.0):
        cv.ellipse(body.head_x + body.head[0] * 0.15, sign * body.head[1] * 0.55, eye * 0.8, eye,
                   (110, 34, 24) if plan.archetype == "fly" else (24, 20, 18))
    # gloss: light comes from the same side of the plate for every specimen
    cv.ellipse(body.thorax_x + body.thorax[0] * 0.2, body.thorax[1] * 0.35, body.thorax[0] * 0.4, body.thorax[1] * 0.2,
               (255, 255, 255, 55))


def _draw_elytra(cv: _Canvas, body: _Body, color: Color) -> None:
    length, half_width = body.abdomen
    x = body.abdomen_start - length * 0.47
    cv.ellipse(x, 0.0, length * 0.54, half_width * 1.05, color, outline=_shade(color, 0.6))
    cv.line([complex(x + length * 0.52, 0), complex(x - length * 0.52, 0)], 0.008, _shade(color, 0.55))
    cv.ellipse(x + length * 0.1, half_width * 0.45, length * 0.3, half_width * 0.14, (255, 255, 255, 50))


def _draw_pattern(cv: _Canvas, look: Look, body: _Body) -> None:
    """The family's coarse colour pattern, on the abdomen (or the elytra covering it)."""
    kind, color, size = look.family.pattern, look.family.pattern_color, look.family.pattern_size
    length, half_width = body.abdomen
    start = body.abdomen_start
    if kind == "stripe":
        cv.ellipse(start - length * 0.45, 0.0, length * 0.45, half_width * 0.18 * size, color)
    elif kind == "spots":
        for t in (0.25, 0.55):
            for sign in (1.0, -1.0):
                cv.ellipse(start - t * length, sign * half_width * 0.45, 0.035 * size, 0.035 * size, color)
    elif kind == "tip":
        cv.ellipse(start - length * 0.85, 0.0, length * 0.17 * size, half_width * 0.55, color)
    elif kind == "lateral":
        for sign in (1.0, -1.0):
            cv.ellipse(start - length * 0.45, sign * half_width * 0.7, length * 0.38, half_width * 0.16 * size, color)
    elif kind == "bands" and look.plan.segments == 1:
        for t in (0.3, 0.62):
            cv.ellipse(start - t * length, 0.0, length * 0.05 * size, half_width * 0.95, color)


_LIGHT, _DARK = (255, 255, 255), (0, 0, 0)
_SPOT_COLORS = {True: (240, 232, 206), False: (22, 18, 16)}


def _chords(x: float, a: float, b: float, direction: float, offsets: np.ndarray) -> list[tuple[complex, complex]]:
    """The segments of the lines ``offset * n + t * d`` (d at ``direction`` degrees, n normal to it) inside the
    axis-aligned ellipse centred at (x, 0) with half axes a, b."""
    d = np.exp(1j * np.radians(direction))
    n = 1j * d
    qa = (d.real / a) ** 2 + (d.imag / b) ** 2
    qb = 2 * offsets * (n.real * d.real / a**2 + n.imag * d.imag / b**2)
    qc = offsets**2 * ((n.real / a) ** 2 + (n.imag / b) ** 2) - 1
    disc = qb**2 - 4 * qa * qc
    out = []
    for s, p, r in zip(offsets[disc > 0], qb[disc > 0], np.sqrt(disc[disc > 0])):
        t0, t1 = (-p - r) / (2 * qa), (-p + r) / (2 * qa)
        out.append((x + s * n + t0 * d, x + s * n + t1 * d))
    return out


def _texture(cv: _Canvas, x: float, a: float, b: float, kind: str, period: float, alpha: int, phase: float) -> None:
    """Light and dark strokes in equal measure inside an ellipse of the body (a part's mean colour unchanged)."""
    a, b = a * 0.9, b * 0.9  # keep clear of the outline: the silhouette is the order's
    light, dark = _LIGHT + (alpha,), _DARK + (alpha,)
    reach = max(a, b) + period
    if kind in ("transverse", "longitudinal"):
        offsets = np.arange(-reach, reach, period) + phase * period
        direction = 90.0 if kind == "transverse" else 0.0
        for shift, color in ((0.0, light), (period / 2, dark)):
            for p, q in _chords(x, a, b, direction, offsets + shift):
                cv.line([p, q], period / 2, color)
    elif kind == "crosshatch":
        offsets = np.arange(-reach, reach, period) + phase * period
        for direction, color in ((45.0, light), (-45.0, dark)):
            for p, q in _chords(x, a, b, direction, offsets):
                cv.line([p, q], period / 4, color)
    else:  # dots: a light dot and a dark one in every period x period cell
        grid = np.arange(-reach, reach, period) + phase * period
        r = period * 0.22
        for gx in grid:
            for gy in grid:
                for dx, color in ((0.0, light), (period / 2, dark)):
                    px, py = gx + dx, gy + dx
                    if (px / a) ** 2 + (py / b) ** 2 < 1:
                        cv.ellipse(x + px, py, r, r, color)


def _draw_fine_marks(cv: _Canvas, look: Look, body: _Body, rng: np.random.Generator) -> None:
    """The genus texture (period from the species) and the species' tiny thorax spots, drawn last so that wings
    never hide them."""
    texture, detail = look.texture, look.detail
    period = cv.image_heights(detail.period)
    alpha = int(255 * texture.strength)
    phase = float(rng.uniform(0, 1))
    if look.plan.wings == "elytra":
        length, half_width = body.abdomen
        parts = [(body.abdomen_start - length * 0.47, length * 0.54, half_width * 1.05)]
    else:
        parts = [(x, hl, hw) for x, hl, hw in _abdomen_segments(body, look.plan)]
    if texture.thorax:
        parts.append((body.thorax_x, body.thorax[0], body.thorax[1]))
    for x, a, b in parts:
        _texture(cv, x, a, b, texture.kind, period, alpha, phase)
    radius = cv.image_heights(0.02)  # spots about 2.5 pixels across on a 64-pixel model input
    for k in range(detail.spots):
        along = body.thorax_x + body.thorax[0] * (0.0 if detail.spots == 1 else 0.45 - 0.9 * k)
        for sign in (1.0, -1.0):
            cv.ellipse(along, sign * body.thorax[1] * 0.5, radius, radius, _SPOT_COLORS[detail.spot_light])


def draw_specimen(cv: _Canvas, look: Look, rng: np.random.Generator) -> None:
    """Draw one specimen of ``look`` on ``cv`` with a random pose."""
    damaged = rng.random() < 0.12  # trap specimens often lose a leg or two
    pose = _Pose(
        leg_angles=rng.normal(0, 12, size=(3, 2, 2)),
        antenna_angles=rng.normal(0, 8, size=2),
        spread=float(rng.normal(0, 6)),
        missing_legs=frozenset(rng.choice(6, size=int(rng.integers(1, 3)), replace=False).tolist() if damaged else ()),
        tint=rng.normal(0, 6, size=3),
    )
    body = _layout(look.plan, look.family, float(rng.uniform(0.92, 1.08)))
    _draw_legs(cv, look, body, pose)
    _draw_antennae(cv, look, body, pose)
    _draw_wings(cv, look, body, pose, "under")
    _draw_body(cv, look, body, pose)
    _draw_wings(cv, look, body, pose, "over")
    _draw_fine_marks(cv, look, body, rng)
