"""`python -m camjax.curate --src DIR_OR_LIST --out DIR [--camera CLASS] [--min_quality 93] [--link] [--dedupe] [--workers N]`.

Checks every photo under SRC (a folder tree, or a text file listing paths; several --src, or
positional SRC, allowed), copies or hard-links the trustworthy ones into OUT/<class>/, writes
OUT/manifest.csv with a reason for every rejection, and prints a per-class summary.
"""

import os
import sys

from absl import app, flags

from camjax.curate import curator
from camjax.curate.rules import DEFAULT_EDITORS, Rules

_SRC = flags.DEFINE_multi_string(
    "src", [], "Folder tree of photos, or a text file of paths (one per line); repeatable."
)
_OUT = flags.DEFINE_string("out", None, "Output folder: OUT/<class>/ and OUT/manifest.csv.")
_CAMERA = flags.DEFINE_string("camera", None, "Keep only this challenge class (default: any of the ten).")
_MIN_QUALITY = flags.DEFINE_integer(
    "min_quality", 93, "Keep JPEG quality (ImageMagick's %Q) > this; the winners used 93."
)
_CHECK_SIZE = flags.DEFINE_bool("check_size", True, "Require the camera's native resolution (either orientation).")
_CHECK_SOFTWARE = flags.DEFINE_bool("check_software", True, "Reject files whose metadata names an editor.")
_CHECK_EOI = flags.DEFINE_bool(
    "check_eoi", True, "Reject files without an end-of-image marker near their end (truncated)."
)
_EDITORS = flags.DEFINE_list(
    "editors", list(DEFAULT_EDITORS), "Case-insensitive substrings of Software/XMP values that mean edited."
)
_LINK = flags.DEFINE_bool("link", False, "Hard-link accepted files instead of copying them (copies where links fail).")
_DEDUPE = flags.DEFINE_bool("dedupe", False, "Reject files whose image data repeats an earlier accepted file's.")
_WORKERS = flags.DEFINE_integer("workers", None, "Processes (default: one per CPU, at most one per 256 files).")
_PROGRESS = flags.DEFINE_bool("progress", True, "Show a progress bar on stderr (when it is a terminal).")


def main(argv):
    sources = _SRC.value + argv[1:]
    if not sources:
        raise app.UsageError("give --src DIR_OR_LIST (or SRC as an argument)")
    try:
        rules = Rules(
            min_quality=_MIN_QUALITY.value,
            camera=_CAMERA.value,
            check_size=_CHECK_SIZE.value,
            check_software=_CHECK_SOFTWARE.value,
            check_eoi=_CHECK_EOI.value,
            editors=tuple(_EDITORS.value),
        )
        verdicts = curator.curate(
            sources,
            _OUT.value,
            rules,
            link=_LINK.value,
            dedupe=_DEDUPE.value,
            workers=_WORKERS.value,
            progress=_PROGRESS.value,
        )
    except (FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(curator.summary_table(verdicts))
    accepted = sum(v.accepted for v in verdicts)
    print(f"accepted {accepted} of {len(verdicts)} files; manifest: {os.path.join(_OUT.value, curator.MANIFEST)}")
    return 0


if __name__ == "__main__":
    flags.mark_flags_as_required(["out"])
    app.run(main)
