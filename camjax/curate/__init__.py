"""Dataset enrichment: keep only downloaded photos that provably come from a challenge camera, untouched.

    python -m camjax.curate --src DIR_OR_LIST --out DIR [--camera CLASS] [--min_quality 93] [--link] [--dedupe]

Header-only (EXIF, XMP, quantisation tables, frame size; pixels are never decoded), parallel,
with a manifest row and reasons for every file. `camjax.curate.flickr` downloads candidates.
"""

from camjax.curate.aliases import make_matches, model_class, search_text
from camjax.curate.curator import (
    MANIFEST,
    MANIFEST_FIELDS,
    check_all,
    curate,
    list_sources,
    summary_table,
    write_manifest,
)
from camjax.curate.header import Header, Unusable, read_header
from camjax.curate.quality import estimate_quality, ijg_table
from camjax.curate.rules import (
    DEFAULT_EDITORS,
    Rules,
    Verdict,
    check_file,
    is_native,
    judge,
)

__all__ = [
    "DEFAULT_EDITORS",
    "MANIFEST",
    "MANIFEST_FIELDS",
    "Header",
    "Rules",
    "Unusable",
    "Verdict",
    "check_all",
    "check_file",
    "curate",
    "estimate_quality",
    "ijg_table",
    "is_native",
    "judge",
    "list_sources",
    "make_matches",
    "model_class",
    "read_header",
    "search_text",
    "summary_table",
    "write_manifest",
]
