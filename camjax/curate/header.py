"""Reads what the curation rules need from a JPEG's headers - never its pixels.

The marker segments up to the first start-of-scan are read and handed to PIL (lazy open, never
`.load()`), so a 12 MP photo costs a few KiB of I/O and no decoding: EXIF, XMP, quantisation
tables and frame size are all in front of the entropy-coded data. A truncated file is recognised
by the missing end-of-image marker near the end of the file (entropy-coded data cannot contain
one; a maker's trailer after it is fine while the marker stays within `eoi_window` bytes of the end).
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import os
import re
import warnings

from PIL import Image, UnidentifiedImageError

from camjax.curate.quality import estimate_quality

EOI_WINDOW = 64 * 1024
_MAX_HEADER = 16 * 1024 * 1024  # more marker data than any camera writes: not a photo
_STANDALONE = {0x01, *range(0xD0, 0xD8)}  # markers without a length field
_EXIF_TAGS = {"make": 0x010F, "model": 0x0110, "software": 0x0131, "orientation": 0x0112, "processing_software": 0x000B}
# XMP properties that name the program that wrote or edited the file (attribute or element form).
_XMP_TOOL = re.compile(
    r"(?:CreatorTool|softwareAgent|Software|ProcessingSoftware)\s*(?:=\s*[\"']([^\"']*)[\"']|>\s*([^<]+?)\s*<)"
)


class Unusable(Exception):
    """A file the rules cannot judge; `rule` names the failed check for the manifest."""

    def __init__(self, path: str, rule: str, detail: str):
        super().__init__(f"{path}: {rule}: {detail}")
        self.path = path
        self.rule = rule
        self.detail = detail


@dataclasses.dataclass(frozen=True)
class Header:
    width: int
    height: int
    quality: int | None  # ImageMagick's %Q; None where it is undefined
    make: str
    model: str
    orientation: object  # as stored: an int 1-8 when sane, None when absent
    software: tuple[str, ...]  # EXIF Software/ProcessingSoftware and XMP tool names, in that order
    has_eoi: bool
    digest: str  # sha256 of everything from the first scan on ('' unless asked for)


def _read_markers(f, name: str) -> tuple[bytes, int]:
    """The bytes from SOI through the first SOS segment, and where the entropy-coded data starts."""
    buf = bytearray(f.read(4096))
    if not buf:
        raise Unusable(name, "not_jpeg", "empty file")
    if buf[:3] != b"\xff\xd8\xff":
        raise Unusable(name, "not_jpeg", f"does not start with a JPEG SOI marker (starts {bytes(buf[:4])!r})")

    def need(n: int) -> None:
        while len(buf) < n:
            chunk = f.read(max(n - len(buf), 65536))
            if not chunk:
                raise Unusable(name, "truncated", f"ends inside its headers (at byte {len(buf)})")
            buf.extend(chunk)

    pos = 2
    while True:
        need(pos + 2)
        if buf[pos] != 0xFF:
            raise Unusable(name, "not_jpeg", f"no JPEG marker at byte {pos} (found 0x{buf[pos]:02x})")
        marker = buf[pos + 1]
        if marker == 0xFF:  # fill byte
            pos += 1
            continue
        if marker in _STANDALONE:
            pos += 2
            continue
        if marker == 0xD9:
            raise Unusable(name, "truncated", "ends (EOI) before any image data")
        need(pos + 4)
        end = pos + 2 + int.from_bytes(buf[pos + 2 : pos + 4], "big")
        if end > _MAX_HEADER:
            raise Unusable(name, "not_jpeg", f"over {_MAX_HEADER} bytes of JPEG headers")
        need(end)
        if marker == 0xDA:
            return bytes(buf[:end]), end
        pos = end


def _text(value) -> str:
    if isinstance(value, bytes):
        value = value.decode("latin-1")
    return str(value).replace("\x00", " ").strip() if value is not None else ""


def read_header(path: str | os.PathLike, eoi_window: int = EOI_WINDOW, digest: bool = False) -> Header:
    """The header facts of one JPEG file; raises Unusable (never anything else for bad data)."""
    name = os.fspath(path)
    try:
        with open(name, "rb") as f:
            head, scan = _read_markers(f, name)
            size = os.fstat(f.fileno()).st_size
            f.seek(max(scan, size - eoi_window))
            has_eoi = b"\xff\xd9" in f.read()
            sha = ""
            if digest:
                f.seek(scan)
                h = hashlib.sha256()
                while chunk := f.read(1 << 20):
                    h.update(chunk)
                sha = h.hexdigest()
    except OSError as e:
        raise Unusable(name, "unreadable", str(e.strerror or e)) from e
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # PIL warns on each corrupt EXIF tag; the rules report what is missing
            with Image.open(io.BytesIO(head), formats=["JPEG"]) as im:
                width, height = im.size
                tables = dict(im.quantization or {})
                xmp = im.info.get("xmp") or b""
                try:
                    exif = im.getexif()
                except Exception as e:  # PIL raises many types on malformed EXIF
                    raise Unusable(name, "exif", f"unreadable EXIF ({type(e).__name__}: {e})") from e
    except (UnidentifiedImageError, Image.DecompressionBombError, OSError, SyntaxError, ValueError) as e:
        raise Unusable(name, "not_jpeg", f"PIL cannot read the JPEG headers ({e})") from e
    if not tables:
        raise Unusable(name, "not_jpeg", "no quantisation tables (not a DCT JPEG)")
    fields = {k: exif.get(tag) for k, tag in _EXIF_TAGS.items()}
    xmp_text = xmp.decode("utf-8", "replace") if isinstance(xmp, bytes) else str(xmp)
    software = [_text(fields["software"]), _text(fields["processing_software"])]
    software += [(a or b).strip() for a, b in _XMP_TOOL.findall(xmp_text)]
    if "xmlns:crs=" in xmp_text:
        software.append("Adobe Camera Raw settings (XMP crs:)")
    return Header(
        width=width,
        height=height,
        quality=estimate_quality(tables),
        make=_text(fields["make"]),
        model=_text(fields["model"]),
        orientation=fields["orientation"],
        software=tuple(dict.fromkeys(s for s in software if s)),
        has_eoi=has_eoi,
        digest=sha,
    )
