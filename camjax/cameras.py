"""The task facts of the 2018 IEEE SPS camera model identification challenge, in one place."""

from __future__ import annotations

import dataclasses
import re

# Exact folder names of the challenge's train set, in the challenge's order.
CHALLENGE_CLASSES: tuple[str, ...] = (
    "HTC-1-M7",
    "iPhone-4s",
    "iPhone-6",
    "LG-Nexus-5x",
    "Motorola-Droid-Maxx",
    "Motorola-Nexus-6",
    "Motorola-X",
    "Samsung-Galaxy-Note3",
    "Samsung-Galaxy-S4",
    "Sony-NEX-7",
)

# Native sensor resolutions, portrait (H, W); each may also appear rotated.
NATIVE_RESOLUTIONS: dict[str, tuple[tuple[int, int], ...]] = {
    "HTC-1-M7": ((2688, 1520),),
    "iPhone-4s": ((3264, 2448),),
    "iPhone-6": ((3264, 2448),),
    "LG-Nexus-5x": ((4032, 3024),),
    "Motorola-Droid-Maxx": ((4320, 2432),),
    "Motorola-Nexus-6": ((4160, 3120), (4130, 3088), (4160, 3088)),
    "Motorola-X": ((4160, 3120),),
    "Samsung-Galaxy-Note3": ((4128, 2322),),
    "Samsung-Galaxy-S4": ((4128, 2322),),
    "Sony-NEX-7": ((6000, 4000),),
}


@dataclasses.dataclass(frozen=True)
class Manipulation:
    """One of the challenge's discrete test-set manipulations."""

    name: str
    kind: str  # 'none' | 'jpeg' | 'resize' | 'gamma'
    value: float  # JPEG quality, resize factor or gamma

    @property
    def id(self) -> int:
        return MANIPULATIONS.index(self)


# Index 0 is 'unaltered'; the auxiliary head predicts this 9-way index.
MANIPULATIONS: tuple[Manipulation, ...] = (
    Manipulation("none", "none", 0.0),
    Manipulation("jpeg70", "jpeg", 70),
    Manipulation("jpeg90", "jpeg", 90),
    Manipulation("resize0.5", "resize", 0.5),
    Manipulation("resize0.8", "resize", 0.8),
    Manipulation("resize1.5", "resize", 1.5),
    Manipulation("resize2.0", "resize", 2.0),
    Manipulation("gamma0.8", "gamma", 0.8),
    Manipulation("gamma1.2", "gamma", 1.2),
)
MANIPULATION_NAMES: tuple[str, ...] = tuple(m.name for m in MANIPULATIONS)
NUM_MANIPULATIONS = len(MANIPULATIONS)

# Weighted accuracy = 0.7 * acc(unaltered) + 0.3 * acc(manipulated).
SCORE_WEIGHT_UNALT = 0.7
SCORE_WEIGHT_MANIP = 0.3


def manipulation_by_name(name: str) -> Manipulation:
    for m in MANIPULATIONS:
        if m.name == name:
            return m
    raise ValueError(f"unknown manipulation {name!r}; expected one of {MANIPULATION_NAMES}")


def _squash(name: str) -> str:
    return re.sub(r"[^a-z0-9]", "", name.lower())


_CHALLENGE_BY_KEY = {_squash(c): c for c in CHALLENGE_CLASSES}


def canonical_class_name(name: str) -> str:
    """Maps a folder name to the challenge's spelling when it is one of the ten
    (case- and separator-insensitive: 'iphone_6' -> 'iPhone-6'); other names pass through."""
    return _CHALLENGE_BY_KEY.get(_squash(name), name)


def is_manipulated_from_fname(fname: str) -> bool | None:
    """The challenge's test files say in their name whether they were manipulated."""
    stem = fname.rsplit(".", 1)[0]
    if stem.endswith("_manip"):
        return True
    if stem.endswith("_unalt"):
        return False
    return None
