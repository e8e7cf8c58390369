"""Taxonomic levels, label vocabularies and taxonomy strings.

Every specimen carries four ranks (order, family, genus, species), any of which may be unknown. Unknown is
spelled ``not_classified`` in BIOSCAN files, as an empty cell in BOLD-style TSVs, and ``-1`` as an id.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

LEVELS: tuple[str, ...] = ("order", "family", "genus", "species")
UNKNOWN_ID = -1
NOT_CLASSIFIED = "not_classified"
_UNKNOWN_SPELLINGS = {"", NOT_CLASSIFIED, "nan", "none", "na", "n/a", "unknown", "0"}


def clean_rank(value: object) -> str | None:
    """Return a rank name stripped of whitespace, or ``None`` when the value means "unknown"."""
    if value is None:
        return None
    if isinstance(value, float) and np.isnan(value):
        return None
    text = " ".join(str(value).split())
    return None if text.lower() in _UNKNOWN_SPELLINGS else text


def clean_lineage(ranks: Sequence[object]) -> tuple[str | None, ...]:
    """Clean four rank values (order, family, genus, species) into names or ``None``."""
    if len(ranks) != len(LEVELS):
        raise ValueError(f"a lineage has {len(LEVELS)} ranks ({', '.join(LEVELS)}), got {len(ranks)}")
    return tuple(clean_rank(r) for r in ranks)


def taxonomy_string(ranks: Sequence[object], unknown: str | None = None) -> str:
    """The text prompt for a lineage: the known ranks space-joined, order first.

    Unknown ranks are left out (the paper's prompt), or written as ``unknown`` when it is given (CLIBD writes
    ``not_classified``).
    """
    parts = []
    for name in clean_lineage(ranks):
        if name is not None:
            parts.append(name)
        elif unknown is not None:
            parts.append(unknown)
    return " ".join(parts)


def deepest_level(ranks: Sequence[object]) -> int:
    """Index of the deepest known rank (0 = order .. 3 = species), or -1 when none is known."""
    known = [i for i, name in enumerate(clean_lineage(ranks)) if name is not None]
    return known[-1] if known else -1


@dataclass
class Taxonomy:
    """Per-level name vocabularies, mapping names to integer ids and back.

    Ids are assigned in sorted name order, so the same set of names always gives the same ids. A name is
    unique within its level; ``parents`` records each name's known parent at the level above, which makes
    lineage checks possible.
    """

    names: dict[str, list[str]]
    parents: dict[str, dict[str, str]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self._ids = {lvl: {n: i for i, n in enumerate(self.names[lvl])} for lvl in LEVELS}

    @classmethod
    def from_lineages(cls, lineages: Iterable[Sequence[object]]) -> Taxonomy:
        """Build vocabularies from rows of (order, family, genus, species)."""
        seen: dict[str, set[str]] = {lvl: set() for lvl in LEVELS}
        parents: dict[str, dict[str, str]] = {lvl: {} for lvl in LEVELS[1:]}
        for row in lineages:
            clean = clean_lineage(row)
            for depth, (lvl, name) in enumerate(zip(LEVELS, clean)):
                if name is None:
                    continue
                seen[lvl].add(name)
                if depth > 0 and clean[depth - 1] is not None:
                    parents[lvl].setdefault(name, clean[depth - 1])
        return cls({lvl: sorted(seen[lvl]) for lvl in LEVELS}, parents)

    def num_classes(self, level: str) -> int:
        return len(self.names[level])

    def id_of(self, level: str, name: object) -> int:
        """The id of ``name`` at ``level``; ``UNKNOWN_ID`` for an unknown or unseen name."""
        clean = clean_rank(name)
        return UNKNOWN_ID if clean is None else self._ids[level].get(clean, UNKNOWN_ID)

    def name_of(self, level: str, idx: int) -> str | None:
        return None if idx < 0 else self.names[level][idx]

    def encode(self, lineages: Iterable[Sequence[object]]) -> np.ndarray:
        """Rows of names -> int64 array [N, 4] of ids (``UNKNOWN_ID`` where unknown)."""
        rows = [[self.id_of(lvl, name) for lvl, name in zip(LEVELS, clean_lineage(r))] for r in lineages]
        return np.asarray(rows, dtype=np.int64).reshape(-1, len(LEVELS))

    def decode(self, ids: np.ndarray) -> list[tuple[str | None, ...]]:
        """Int array [N, 4] -> rows of names (``None`` where unknown)."""
        return [tuple(self.name_of(lvl, int(i)) for lvl, i in zip(LEVELS, row)) for row in np.asarray(ids)]

    def inconsistent(self, ranks: Sequence[object]) -> list[str]:
        """Messages for each rank whose known parent differs from the parent given in ``ranks``."""
        clean = clean_lineage(ranks)
        problems = []
        for depth in range(1, len(LEVELS)):
            name, parent = clean[depth], clean[depth - 1]
            if name is None or parent is None:
                continue
            known = self.parents[LEVELS[depth]].get(name)
            if known is not None and known != parent:
                problems.append(f"{LEVELS[depth]} {name!r} belongs to {LEVELS[depth - 1]} {known!r}, not {parent!r}")
        return problems

    def to_dict(self) -> dict:
        return {"levels": list(LEVELS), "names": self.names, "parents": self.parents}

    @classmethod
    def from_dict(cls, data: Mapping) -> Taxonomy:
        if list(data.get("levels", LEVELS)) != list(LEVELS):
            raise ValueError(f"taxonomy levels {data.get('levels')} differ from {list(LEVELS)}")
        return cls({lvl: list(data["names"][lvl]) for lvl in LEVELS}, {k: dict(v) for k, v in data["parents"].items()})

    def save(self, path: str) -> None:
        with open(path, "w", encoding="utf-8") as fh:
            json.dump(self.to_dict(), fh, indent=1, ensure_ascii=False)

    @classmethod
    def load(cls, path: str) -> Taxonomy:
        with open(path, encoding="utf-8") as fh:
            return cls.from_dict(json.load(fh))
