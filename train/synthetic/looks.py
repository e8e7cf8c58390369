"""Looks: what each taxon contributes to a picture, each rank at its own spatial scale.

The order fixes the silhouette and body plan (low spatial frequencies), the family the colours and a coarse
colour pattern (mid), the genus a fine texture and the species its period, tiny spots and wing venation (high:
a few pixels at the model's input size). A blur then removes species and genus before family and order, as in
real photographs. Nothing a species adds changes a part's mean colour or the outline.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace

import numpy as np

from train.synthetic.config import _LOOKS, SynthConfig, _rng
from train.synthetic.tree import SynthTree

Color = tuple[int, int, int]

# Insect-like body colours: blacks, browns, tans, yellows, oranges, rusts, an olive and a green.
_PALETTE: tuple[Color, ...] = (
    (28, 24, 22), (58, 50, 46), (74, 48, 30), (118, 64, 34), (146, 98, 56), (192, 152, 96),
    (214, 188, 112), (222, 188, 62), (210, 120, 46), (160, 62, 36), (112, 114, 58), (78, 122, 72),
)
_DARK_ACCENTS: tuple[Color, ...] = ((20, 18, 16), (52, 32, 22), (70, 30, 24))
_LIGHT_ACCENTS: tuple[Color, ...] = ((236, 214, 140), (240, 232, 206), (232, 170, 70), (200, 210, 120))
_PATTERNS = ("bands", "stripe", "spots", "tip", "saddle", "lateral", "plain")
# Genus textures: light and dark strokes in equal measure, so blurring one leaves the part's colour.
_TEXTURES = ("transverse", "longitudinal", "crosshatch", "dots")
# Texture periods in image heights: about 4 and 7 pixels on a 64-pixel model input (hirviz-tiny), 1.8x apart so
# that training's random resized crop (zoom 0.8-1.3x) does not blur the distinction; a 7x7 box blur leaves
# under a quarter of either's contrast, while the body (40-58 pixels long there) keeps its outline.
_PERIODS = (0.06, 0.11)
_SPOT_COUNTS = (0, 1, 2)


@dataclass(frozen=True)
class OrderPlan:
    """Body plan of an order; lengths relative to the body length, angles in degrees."""

    archetype: str
    head: tuple[float, float]  # length, width
    thorax: tuple[float, float]
    waist: float  # petiole length (0 = none)
    abdomen: tuple[float, float]
    segments: int
    taper: float  # 0 = blunt abdomen tip, 1 = pointed
    wings: str  # none | clear | double | scaled | elytra | hemi
    wing: tuple[float, float]  # length, width
    spread: float  # wing angle away from the body axis
    antenna: float
    elbowed: bool
    legs: float
    leg_width: float
    eye: float  # eye radius relative to head width


_ARCHETYPES: tuple[OrderPlan, ...] = (
    OrderPlan("fly", head=(0.12, 0.21), thorax=(0.28, 0.26), waist=0.0, abdomen=(0.42, 0.26), segments=5,
              taper=0.5, wings="clear", wing=(0.62, 0.21), spread=24, antenna=0.08, elbowed=False, legs=0.50,
              leg_width=0.020, eye=0.42),
    OrderPlan("beetle", head=(0.10, 0.17), thorax=(0.17, 0.30), waist=0.0, abdomen=(0.62, 0.38), segments=1,
              taper=0.25, wings="elytra", wing=(0.64, 0.40), spread=0, antenna=0.30, elbowed=False, legs=0.36,
              leg_width=0.026, eye=0.22),
    OrderPlan("wasp", head=(0.11, 0.17), thorax=(0.25, 0.17), waist=0.07, abdomen=(0.45, 0.21), segments=6,
              taper=0.85, wings="double", wing=(0.56, 0.15), spread=18, antenna=0.40, elbowed=True, legs=0.52,
              leg_width=0.016, eye=0.30),
    OrderPlan("moth", head=(0.09, 0.14), thorax=(0.22, 0.18), waist=0.0, abdomen=(0.55, 0.15), segments=7,
              taper=0.5, wings="scaled", wing=(0.60, 0.36), spread=38, antenna=0.34, elbowed=False, legs=0.32,
              leg_width=0.014, eye=0.30),
    OrderPlan("midge", head=(0.07, 0.11), thorax=(0.20, 0.15), waist=0.0, abdomen=(0.73, 0.09), segments=9,
              taper=0.3, wings="clear", wing=(0.44, 0.10), spread=30, antenna=0.16, elbowed=False, legs=0.78,
              leg_width=0.010, eye=0.34),
    OrderPlan("bug", head=(0.12, 0.18), thorax=(0.20, 0.32), waist=0.0, abdomen=(0.60, 0.34), segments=1,
              taper=0.35, wings="hemi", wing=(0.66, 0.30), spread=5, antenna=0.32, elbowed=False, legs=0.42,
              leg_width=0.020, eye=0.26),
    OrderPlan("wingless", head=(0.12, 0.20), thorax=(0.22, 0.22), waist=0.0, abdomen=(0.62, 0.20), segments=8,
              taper=0.6, wings="none", wing=(0.0, 0.0), spread=0, antenna=0.45, elbowed=False, legs=0.30,
              leg_width=0.022, eye=0.20),
)


@dataclass(frozen=True)
class FamilyLook:
    """Colours, a coarse colour pattern and proportions shared by a family (mid spatial frequencies)."""

    body: Color
    secondary: Color
    legs: Color
    wing_tint: tuple[int, int, int, int]  # RGBA of membranous wings, or the colour of opaque ones
    length_scale: float
    width_scale: float
    head_scale: float
    pattern: str  # one of _PATTERNS: a band, stripe or patch several pixels wide at the model's input size
    pattern_color: Color
    pattern_size: float


@dataclass(frozen=True)
class GenusTexture:
    """A fine texture shared by a genus: its kind and the body parts it covers (high spatial frequencies)."""

    kind: str  # one of _TEXTURES
    thorax: bool  # the thorax is textured too, not only the abdomen (or the elytra covering it)
    strength: float  # opacity of the light and dark strokes


@dataclass(frozen=True)
class SpeciesDetail:
    """Fine species marks: the texture's period, tiny spots on the thorax and the wing venation.

    Everything here is a few pixels wide at the model's input size and leaves the mean colour of a part
    unchanged, so a blur wipes it out while silhouette (order) and colours (family) survive.
    """

    period: float  # of the genus texture, in image heights (one of _PERIODS)
    spots: int  # pairs of tiny spots on the thorax
    spot_light: bool  # light spots (else dark)
    veins: int


@dataclass(frozen=True)
class Look:
    """Everything that fixes what a species looks like."""

    plan: OrderPlan
    family: FamilyLook
    texture: GenusTexture
    detail: SpeciesDetail


def _jitter(rng: np.random.Generator, value: float, spread: float = 0.1) -> float:
    return float(value * rng.uniform(1 - spread, 1 + spread))


def _order_plan(index: int, rng: np.random.Generator) -> OrderPlan:
    """Order ``index`` takes the next archetype, its proportions perturbed.

    Past the seventh order archetypes repeat, each time perturbed more, so that orders stay
    distinguishable (if less so than the first seven).
    """
    base = _ARCHETYPES[index % len(_ARCHETYPES)]
    amount = 0.1 + 0.15 * (index // len(_ARCHETYPES))

    def pair(p: tuple[float, float]) -> tuple[float, float]:
        return _jitter(rng, p[0], amount), _jitter(rng, p[1], amount)

    return replace(
        base, head=pair(base.head), thorax=pair(base.thorax), waist=_jitter(rng, base.waist, amount),
        abdomen=pair(base.abdomen), segments=base.segments + int(rng.integers(-1, 2)) if base.segments > 1 else 1,
        taper=float(np.clip(base.taper + rng.normal(0, 0.08), 0, 0.95)), wing=pair(base.wing),
        spread=_jitter(rng, base.spread, 0.2), antenna=_jitter(rng, base.antenna, 0.2),
        legs=_jitter(rng, base.legs, amount), leg_width=_jitter(rng, base.leg_width), eye=_jitter(rng, base.eye),
    )


def _byte(value: float) -> int:
    return int(min(255.0, max(0.0, value)))


def _shade(color: Sequence[float], factor: float) -> Color:
    return tuple(_byte(c * factor) for c in color)  # type: ignore[return-value]


def _mix(a: Sequence[float], b: Sequence[float], t: float) -> Color:
    return tuple(_byte(x + (y - x) * t) for x, y in zip(a, b))  # type: ignore[return-value]


def _vary(color: Color, rng: np.random.Generator, amount: float) -> Color:
    return tuple(_byte(c + v) for c, v in zip(color, rng.normal(0, amount, size=3)))  # type: ignore[return-value]


def _family_look(palette_index: int, pattern: str, rng: np.random.Generator) -> FamilyLook:
    body = _vary(_PALETTE[palette_index % len(_PALETTE)], rng, 8)
    other = _PALETTE[int(rng.integers(len(_PALETTE)))]
    if rng.random() < 0.6:
        secondary = _mix(body, other, float(rng.uniform(0.3, 0.8)))
    else:
        secondary = _shade(body, rng.uniform(0.6, 1.3))
    legs = _mix(body, (200, 170, 110), float(rng.uniform(0.0, 0.6)))
    if rng.random() < 0.6:
        tint = (228, 232, 236, int(rng.integers(55, 95)))  # clear, slightly milky
    else:
        tint = (*_mix((120, 100, 80), body, 0.4), int(rng.integers(90, 140)))  # smoky or tinted
    scales = _jitter(rng, 1.0, 0.15), _jitter(rng, 1.0, 0.18), _jitter(rng, 1.0, 0.12)
    accents = _LIGHT_ACCENTS if sum(body) < 330 else _DARK_ACCENTS
    color = _vary(accents[int(rng.integers(len(accents)))], rng, 6)
    return FamilyLook(body, secondary, legs, tint, *scales, pattern, color, float(rng.uniform(0.8, 1.2)))


def _distinct(rng: np.random.Generator, parent: np.ndarray, choices: int) -> list[int]:
    """For each child (``parent[i]`` its parent), one of ``choices`` codes, distinct among siblings while they last."""
    order = {int(p): rng.permutation(choices) for p in np.unique(parent)}
    seen: dict[int, int] = {}
    codes = []
    for p in parent.tolist():
        codes.append(int(order[p][seen.get(p, 0) % choices]))
        seen[p] = seen.get(p, 0) + 1
    return codes


def build_looks(tree: SynthTree, config: SynthConfig) -> list[Look]:
    """One :class:`Look` per species; siblings get distinct colours and patterns (families), textures (genera)
    and periods and spots (species) while the combinations last."""
    rng = _rng(config.seed, _LOOKS)
    plans = [_order_plan(i, rng) for i in range(config.orders)]
    family_parent, genus_parent = tree.parent["family"], tree.parent["genus"]
    palettes = _distinct(rng, family_parent, len(_PALETTE))
    patterns = _distinct(rng, family_parent, len(_PATTERNS))
    families = [_family_look(palettes[f], _PATTERNS[patterns[f]], rng) for f in range(config.families)]
    textures = _distinct(rng, genus_parent, 2 * len(_TEXTURES))
    genera = [GenusTexture(_TEXTURES[t % len(_TEXTURES)], t >= len(_TEXTURES), float(rng.uniform(0.7, 0.9)))
              for t in textures]
    codes = _distinct(rng, tree.parent["species"], len(_PERIODS) * len(_SPOT_COUNTS))
    details = [SpeciesDetail(_PERIODS[c % len(_PERIODS)], _SPOT_COUNTS[c // len(_PERIODS)], bool(rng.random() < 0.5),
                             int(rng.integers(2, 6))) for c in codes]
    lineage = tree.lineage_ids(np.arange(config.species))
    return [Look(plans[o], families[f], genera[g], details[s]) for o, f, g, s in lineage.tolist()]
