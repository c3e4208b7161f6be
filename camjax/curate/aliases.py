"""EXIF Make/Model strings -> challenge camera class: the one table of how real devices name themselves.

Phones write their build model (carrier variants included: AT&T's Samsungs prefix
'SAMSUNG-', Verizon's HTC One is 'HTC6500LVW'), so each class lists the model numbers of
every variant that carries the same camera module, and look-alikes stay out: 'iPhone 6 Plus',
'Nexus 6P', 'HTC One_M8', the Galaxy Note 3 Neo (SM-N750*), the S4 mini/Active/Zoom. The
Motorola XT1080 is the Droid Ultra/Maxx (10 MP, 4320x2432); the Moto X of the challenge
(13 MP, 4160x3120) is the 2014 model, XT1085/XT1092-XT1097.
"""

from __future__ import annotations

import re

from camjax.cameras import CHALLENGE_CLASSES, canonical_class_name

# class -> (EXIF Make values, EXIF Model patterns (full match, case-insensitive), Flickr search text)
_TABLE: dict[str, tuple[tuple[str, ...], tuple[str, ...], str]] = {
    "HTC-1-M7": (("HTC",), ("HTC One", r"HTC One 80[12][a-z]", "HTCONE", "HTC_PN071", "HTC6500LVW"), "HTC One"),
    "iPhone-4s": (("Apple",), ("iPhone 4S",), "iPhone 4S"),
    "iPhone-6": (("Apple",), ("iPhone 6",), "iPhone 6"),
    "LG-Nexus-5x": (("LGE", "LG Electronics"), ("Nexus 5X", r"LG-H79[01]"), "Nexus 5X"),
    "Motorola-Droid-Maxx": (("Motorola",), ("XT1080M?", "DROID MAXX"), "Droid Maxx"),
    "Motorola-Nexus-6": (("Motorola",), ("Nexus 6",), "Nexus 6"),
    "Motorola-X": (("Motorola",), ("XT1085", r"XT109[2-7]"), "Moto X"),
    "Samsung-Galaxy-Note3": (("SAMSUNG",), (r"(SAMSUNG-)?SM-N900[0-9A-Z]*", "SC-01F", "SCL22"), "Galaxy Note 3"),
    "Samsung-Galaxy-S4": (
        ("SAMSUNG",),
        (
            r"GT-I95(0[0-8]|15)[A-Z]?",
            r"(SAMSUNG-)?SGH-I337[A-Z]?",
            r"SGH-M919[A-Z]?",
            r"SCH-I545[A-Z]?",
            r"SPH-L720[A-Z]?",
            r"SCH-R970[A-Z]?",
            "SCH-I959",
            r"SHV-E300[KLS]",
            "SM-S975L",
            "SGH-S970G",
            "SC-04E",
        ),
        "Galaxy S4",
    ),
    "Sony-NEX-7": (("SONY",), ("NEX-7",), "NEX-7"),
}
assert set(_TABLE) == set(CHALLENGE_CLASSES), "aliases must cover exactly the challenge classes"


def _norm(text: str) -> str:
    return " ".join(text.split()).casefold()


_MAKES = {cls: {_norm(m) for m in makes} for cls, (makes, _, _) in _TABLE.items()}
_MODELS = [(cls, re.compile(p, re.IGNORECASE)) for cls, (_, pats, _) in _TABLE.items() for p in pats]


def model_class(model: str) -> str | None:
    """The challenge class whose camera writes this EXIF Model, or None."""
    model = " ".join(model.split())
    return next((cls for cls, pattern in _MODELS if pattern.fullmatch(model)), None)


def make_matches(cls: str, make: str) -> bool:
    """Whether `make` is how the maker of class `cls` fills EXIF Make (case-insensitive)."""
    return _norm(make) in _MAKES[canonical_class_name(cls)]


def search_text(cls: str) -> str:
    """What to type into a photo site's search box to find this class's photos."""
    name = canonical_class_name(cls)
    if name not in _TABLE:
        raise ValueError(f"unknown camera class {cls!r}; expected one of {CHALLENGE_CLASSES}")
    return _TABLE[name][2]
