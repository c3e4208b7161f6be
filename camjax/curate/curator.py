"""Curates a pile of downloaded photos: checks every file in parallel, keeps the trustworthy ones.

Accepted files are copied (or hard-linked) byte for byte into OUT/<class>/ - never re-encoded,
which would destroy the camera's trace - and OUT/manifest.csv lists every input file with what
its headers say and each rule it failed.
"""

from __future__ import annotations

import collections
import concurrent.futures
import csv
import filecmp
import functools
import hashlib
import logging
import multiprocessing
import os
import shutil
import sys
from collections.abc import Iterable, Sequence
from pathlib import Path

from tqdm import tqdm

from camjax.curate.rules import Rules, Verdict, check_file
from camjax.postprocess import atomic_write

MANIFEST = "manifest.csv"
MANIFEST_FIELDS = (
    "path",
    "accepted",
    "class",
    "make",
    "model",
    "software",
    "width",
    "height",
    "orientation",
    "quality",
    "reason",
    "dest",
    "sha256",
)
LIST_SUFFIXES = (".txt", ".lst", ".list")
log = logging.getLogger("camjax")


def list_sources(
    sources: str | os.PathLike | Sequence[str | os.PathLike], exclude: str | os.PathLike | None = None
) -> list[str]:
    """Every file under the given folders, every path in the given list files (a .txt/.lst/.list
    file, one path per line, '#' comments; relative paths are relative to the list file), and any
    other file given itself; sorted, without repeats. Files inside `exclude` (the output folder)
    are skipped, so a rerun does not curate its own output."""
    if isinstance(sources, (str, os.PathLike)):
        sources = [sources]
    skip = os.path.realpath(exclude) + os.sep if exclude is not None else None
    found = []
    for src in map(Path, sources):
        if src.is_dir():
            for folder, dirs, files in os.walk(src):
                if skip and (os.path.realpath(folder) + os.sep).startswith(skip):
                    dirs.clear()
                    continue
                dirs.sort()
                found += [os.path.join(folder, f) for f in files]
        elif src.is_file() and src.suffix.lower() in LIST_SUFFIXES:
            try:
                lines = src.read_text(encoding="utf-8").splitlines()
            except UnicodeDecodeError as e:
                raise ValueError(f"{src}: a list file must be UTF-8 text, one path per line ({e})") from e
            found += [str(src.parent / p) for p in (s.strip() for s in lines) if p and not p.startswith("#")]
        elif src.is_file():
            found.append(str(src))
        else:
            raise FileNotFoundError(f"{src}: no such folder or list file")
    return sorted(dict.fromkeys(found))


def check_all(
    paths: Sequence[str], rules: Rules, digest: bool = False, workers: int | None = None, progress: bool = True
) -> list[Verdict]:
    """Verdicts in input order. `workers` processes (default: one per CPU, one per 256 files at most:
    a header check takes about a millisecond, a worker's start-up about a second); spawned, not
    forked, so a parent that already runs JAX threads is safe. The progress bar shows on a terminal."""
    check = functools.partial(check_file, rules=rules, digest=digest)
    workers = min(workers or min(os.cpu_count() or 1, 1 + len(paths) // 256), max(len(paths), 1))
    bar = functools.partial(
        tqdm, total=len(paths), unit="file", disable=None if progress else True, file=sys.stderr, mininterval=1.0
    )
    if workers == 1:
        return list(bar(map(check, paths)))
    chunk = max(1, min(64, len(paths) // (workers * 8)))
    ctx = multiprocessing.get_context("spawn")
    with concurrent.futures.ProcessPoolExecutor(workers, mp_context=ctx) as pool:
        return list(bar(pool.map(check, paths, chunksize=chunk)))


def _same_bytes(a: str, b: Path) -> bool:
    return b.exists() and (os.path.samefile(a, b) or filecmp.cmp(a, b, shallow=False))


def _place(verdict: Verdict, out: Path, taken: set[Path], link: bool) -> None:
    """Copies or links an accepted file into out/<class>/, under its own name unless another source
    took that name (then with a tag from its source path); reruns find their own earlier copies."""
    src = verdict.path
    name = Path(src).name
    tag = hashlib.sha1(os.path.abspath(src).encode()).hexdigest()[:8]
    folder = out / verdict.camera
    for dest in (folder / name, folder / f"{Path(name).stem}-{tag}{Path(name).suffix}"):
        if dest in taken:
            continue
        if dest.exists() and not _same_bytes(src, dest):
            continue
        taken.add(dest)
        verdict.dest = str(dest)
        if dest.exists():
            return
        folder.mkdir(parents=True, exist_ok=True)
        if link:
            try:
                os.link(src, dest)
                return
            except OSError as e:
                log.warning("cannot hard-link %s (%s); copying", src, e.strerror or e)
        shutil.copy2(src, dest)
        return
    verdict.reject("destination", f"{folder / name} and its tagged variant hold other files")


def write_manifest(verdicts: Iterable[Verdict], path: str | os.PathLike) -> None:
    with atomic_write(path, newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(MANIFEST_FIELDS)
        for v in verdicts:
            w.writerow(
                [
                    v.path,
                    int(v.accepted),
                    v.camera,
                    v.make,
                    v.model,
                    v.software,
                    v.width or "",
                    v.height or "",
                    v.orientation,
                    "" if v.quality is None else v.quality,
                    "; ".join(v.reasons),
                    v.dest,
                    v.digest,
                ]
            )


def summary_table(verdicts: Sequence[Verdict]) -> str:
    """Files, accepted and failures per rule for each class ('-' collects files of no known class);
    a file that fails several rules counts under each."""
    rules = sorted({r for v in verdicts for r in v.rules_failed})
    rows = collections.defaultdict(collections.Counter)
    for v in verdicts:
        row = rows[v.camera or "-"]
        row["files"] += 1
        row["accepted"] += v.accepted
        row.update(v.rules_failed)
    names = sorted(rows, key=lambda c: (c == "-", c))
    total = sum(rows.values(), collections.Counter())
    header = ["class", "files", "accepted", *rules]
    table = [[c, *(str(rows[c][k]) for k in header[1:])] for c in names] + [
        ["total", *(str(total[k]) for k in header[1:])]
    ]
    widths = [max(len(r[i]) for r in [header, *table]) for i in range(len(header))]

    def line(row):
        return "  ".join(s.ljust(w) if i == 0 else s.rjust(w) for i, (s, w) in enumerate(zip(row, widths)))

    return "\n".join(map(line, [header, *table]))


def curate(
    sources,
    out: str | os.PathLike,
    rules: Rules | None = None,
    link: bool = False,
    dedupe: bool = False,
    workers: int | None = None,
    progress: bool = True,
) -> list[Verdict]:
    """Checks every source file, places the accepted ones in out/<class>/, writes out/manifest.csv.
    With `dedupe`, a file whose image data (everything from the first scan on) equals an earlier
    accepted file's is rejected as its duplicate, whatever its metadata says."""
    rules = rules or Rules()
    out = Path(out)
    paths = list_sources(sources, exclude=out)
    verdicts = check_all(paths, rules, digest=dedupe, workers=workers, progress=progress)
    first: dict[str, str] = {}
    taken: set[Path] = set()
    for v in verdicts:
        if v.accepted and dedupe:
            if v.digest in first:
                v.reject("duplicate", f"same image data as {first[v.digest]}")
                continue
            first[v.digest] = v.path
        if v.accepted:
            _place(v, out, taken, link)
    write_manifest(verdicts, out / MANIFEST)
    return verdicts
