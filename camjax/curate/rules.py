"""The trust rules for a downloaded photo (docs/design.md, section 1), applied to one file's headers.

A photo is kept only if its EXIF names one of the challenge cameras, its JPEG quality is above
the threshold (the winners kept > 93: a camera original, not a re-save), its size is the
camera's native resolution in either orientation (not resized or cropped), and no editing
program is named in its metadata. Every failed rule is reported, not just the first.
"""

from __future__ import annotations

import dataclasses
import os

from camjax.cameras import NATIVE_RESOLUTIONS, canonical_class_name
from camjax.curate import aliases
from camjax.curate.header import EOI_WINDOW, Header, Unusable, read_header

# Substrings (case-insensitive) of Software/XMP values that mean the photo went through an editor.
DEFAULT_EDITORS: tuple[str, ...] = (
    "photoshop", "lightroom", "adobe", "camera raw", "gimp", "snapseed", "vsco", "instagram", "picasa",
    "iphoto", "aperture", "pixelmator", "affinity", "capture one", "dxo", "luminar", "acdsee", "paint.net",
    "paintshop", "corel", "photoscape", "fotor", "polarr", "picsart", "aviary", "afterlight", "facetune",
    "prisma", "hipstamatic", "darktable", "rawtherapee", "digikam", "shotwell", "imagemagick",
    "graphicsmagick", "irfanview", "xnview", "faststone", "photo editor", "photo gallery",
)  # fmt: skip


@dataclasses.dataclass(frozen=True)
class Rules:
    """What a photo must satisfy. `min_quality`: keep quality > this (the winners' rule is > 93)."""

    min_quality: int = 93
    camera: str | None = None  # keep only this class (any spelling canonical_class_name knows)
    check_size: bool = True
    check_software: bool = True
    check_eoi: bool = True
    editors: tuple[str, ...] = DEFAULT_EDITORS
    eoi_window: int = EOI_WINDOW

    def __post_init__(self):
        if self.camera is not None:
            name = canonical_class_name(self.camera)
            if name not in NATIVE_RESOLUTIONS:
                raise ValueError(f"unknown camera class {self.camera!r}; expected one of {tuple(NATIVE_RESOLUTIONS)}")
            object.__setattr__(self, "camera", name)
        object.__setattr__(self, "editors", tuple(e.strip().casefold() for e in self.editors if e.strip()))


@dataclasses.dataclass
class Verdict:
    """One manifest row: what the headers say and every rule the file failed ('rule: detail')."""

    path: str
    camera: str = ""
    make: str = ""
    model: str = ""
    software: str = ""
    width: int | None = None
    height: int | None = None
    orientation: str = ""
    quality: int | None = None
    reasons: list[str] = dataclasses.field(default_factory=list)
    digest: str = ""
    dest: str = ""

    @property
    def accepted(self) -> bool:
        return not self.reasons

    @property
    def rules_failed(self) -> list[str]:
        return [r.split(":", 1)[0] for r in self.reasons]

    def reject(self, rule: str, detail: str) -> None:
        self.reasons.append(f"{rule}: {detail}")


def is_native(camera: str, width: int, height: int) -> bool:
    """Whether width x height is one of the camera's sensor resolutions, in either orientation."""
    return any((height, width) in ((h, w), (w, h)) for h, w in NATIVE_RESOLUTIONS[camera])


def judge(header: Header, rules: Rules, verdict: Verdict) -> None:
    """Fills `verdict` from `header` and appends a reason for every rule it breaks."""
    v = verdict
    v.make, v.model, v.width, v.height, v.quality = (
        header.make,
        header.model,
        header.width,
        header.height,
        header.quality,
    )
    v.software = "; ".join(header.software)
    v.orientation = "" if header.orientation is None else str(header.orientation)
    v.digest = header.digest
    v.camera = (aliases.model_class(header.model) if header.model else None) or ""
    if not header.model:
        v.reject("exif", "no EXIF Model" + ("" if header.make else " or Make"))
    elif not v.camera:
        v.reject("model", f"EXIF Model {header.model!r} is not a challenge camera")
    elif not aliases.make_matches(v.camera, header.make):
        v.reject("model", f"EXIF Make {header.make!r} does not make {header.model!r} ({v.camera})")
    if rules.camera and v.camera and v.camera != rules.camera:
        v.reject("camera", f"{v.camera}, not the requested {rules.camera}")
    if header.orientation is not None and not (type(header.orientation) is int and 1 <= header.orientation <= 8):
        v.reject("orientation", f"EXIF Orientation {header.orientation!r} is not one of 1-8")
    if header.quality is None:
        v.reject("quality", "quantisation tables match no IJG quality (ImageMagick reports its default, 92)")
    elif header.quality <= rules.min_quality:
        v.reject("quality", f"{header.quality} <= {rules.min_quality}")
    if rules.check_size and v.camera and not is_native(v.camera, header.width, header.height):
        native = ", ".join(f"{w}x{h}" for h, w in NATIVE_RESOLUTIONS[v.camera])
        v.reject("size", f"{header.width}x{header.height} is not native for {v.camera} ({native}, either way)")
    if rules.check_software:
        edited = [s for s in header.software if any(e in s.casefold() for e in rules.editors)]
        if edited:
            v.reject("software", f"edited with {'; '.join(edited)}")
    if rules.check_eoi and not header.has_eoi:
        v.reject("truncated", f"no JPEG end-of-image marker in the last {rules.eoi_window} bytes")


def check_file(path: str | os.PathLike, rules: Rules, digest: bool = False) -> Verdict:
    """The verdict on one file; bad input becomes a rejection reason, never an exception."""
    verdict = Verdict(os.fspath(path))
    try:
        judge(read_header(path, rules.eoi_window, digest=digest), rules, verdict)
    except Unusable as e:
        verdict.reject(e.rule, e.detail)
    except Exception as e:  # noqa: BLE001 - one odd file must not stop a 10,000-file run
        verdict.reject("unreadable", f"{type(e).__name__}: {e}")
    return verdict
