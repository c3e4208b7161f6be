"""Huge pages for host memory, because XLA:CPU asks the C library for its memory at every step.

Each run of a compiled XLA:CPU program allocates its outputs and one block of temporaries with
`malloc` and frees them when it ends: hundreds of MiB for a training step at 224 px. glibc
serves a block that large with a fresh `mmap` and unmaps it on `free` (its mmap threshold
stops growing at 32 MiB), so every step faults every page of that memory in again, 4 KiB at a
time, and the kernel zeroes each one. On a 2-vCPU EPYC VM a MobileNetV2 train step at
224x224, batch 4, took 84,592 minor page faults and 310 ms; with glibc's
`glibc.malloc.hugetlb=1` tunable, which has malloc ask for transparent huge pages (2 MiB) on
its mappings, 489 faults and 200 ms (`benchmarks/RESULTS.md`, "Huge pages for XLA:CPU's
per-step buffers").

glibc reads its tunables once, when the process starts, so a camjax command started without
this one starts itself again with it: `os.execve` of the same command line, in the same
process (same pid, so a supervisor's signals still reach it), before anything heavy is
imported. `python -m camjax.<cmd>` does that from `camjax/__init__.py`; the benchmark scripts
from `benchmarks/common.py`. Set `CAMJAX_HUGE_PAGES=0` to run as started (to measure without,
or where a re-exec is unwelcome). Nothing happens unless this is Linux with glibc >= 2.35 and
transparent huge pages are not switched off (`/sys/kernel/mm/transparent_hugepage/enabled`
reading `[never]`): elsewhere the tunable could not help.
"""

from __future__ import annotations

import os
import re
import sys
from pathlib import Path

TUNABLE = "glibc.malloc.hugetlb"
WANTED = f"{TUNABLE}=1"
OPT_OUT = "CAMJAX_HUGE_PAGES"  # "0": leave the process as it was started
THP_ENABLED = Path("/sys/kernel/mm/transparent_hugepage/enabled")


def glibc_version() -> tuple[int, int] | None:
    """(major, minor) of the glibc this process runs on, None off glibc."""
    try:
        found = re.fullmatch(r"glibc (\d+)\.(\d+).*", os.confstr("CS_GNU_LIBC_VERSION") or "")
    except (AttributeError, ValueError, OSError):
        return None
    return (int(found[1]), int(found[2])) if found else None


def thp_mode(path: Path = THP_ENABLED) -> str | None:
    """The kernel's transparent huge page mode (always, madvise or never); None where unknown."""
    try:
        found = re.search(r"\[(\w+)\]", path.read_text())
    except OSError:
        return None
    return found[1] if found else None


def with_tunable(tunables: str) -> str:
    """`GLIBC_TUNABLES` with the huge-page tunable set to 1, the other tunables kept."""
    kept = [t for t in tunables.split(":") if t and t.split("=", 1)[0] != TUNABLE]
    return ":".join([*kept, WANTED])


def why_not(environ=os.environ, glibc=None, thp=None) -> str | None:
    """Why this process should not start itself again with the tunable; None when it should."""
    glibc = glibc_version() if glibc is None else glibc
    thp = thp_mode() if thp is None else thp
    if environ.get(OPT_OUT, "1") == "0":
        return f"{OPT_OUT}=0"
    if any(t.split("=", 1)[0] == TUNABLE for t in environ.get("GLIBC_TUNABLES", "").split(":")):
        return f"GLIBC_TUNABLES already sets {TUNABLE}"
    if sys.platform != "linux" or glibc is None or glibc < (2, 35):
        return "needs Linux with glibc >= 2.35"
    if thp in (None, "never"):
        return f"transparent huge pages are {thp or 'unavailable'}"
    return None


def state() -> dict:
    """What a measurement should record about host memory: the tunables, the kernel's mode and
    any allocator preloaded in glibc's place (`LD_PRELOAD`: with tcmalloc, which keeps freed
    blocks mapped, XLA:CPU's per-step block faults nothing in after the first step, for torch
    in the same process as well; RESULTS "Another allocator for XLA:CPU's per-step block")."""
    return {
        "glibc_tunables": os.environ.get("GLIBC_TUNABLES", ""),
        "transparent_hugepage": thp_mode(),
        "ld_preload": os.environ.get("LD_PRELOAD", ""),
    }


def reexec_with_huge_pages() -> None:
    """Starts this command again with `glibc.malloc.hugetlb=1`, unless `why_not` says otherwise.

    Returns only when nothing was done; otherwise the process image is replaced and the
    command starts over (same pid, arguments, interpreter options and working directory).
    """
    if why_not() is not None:
        return
    env = dict(os.environ, GLIBC_TUNABLES=with_tunable(os.environ.get("GLIBC_TUNABLES", "")))
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(sys.executable, sys.orig_argv, env)


def minor_faults() -> int:
    """Minor page faults of this process so far (each a page the kernel maps and zeroes)."""
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt


def mapped_libraries() -> list[str]:
    """The shared libraries mapped into this process (Linux: /proc/self/maps), by address."""
    seen = []
    try:
        with open("/proc/self/maps") as maps:
            for line in maps:
                fields = line.split(maxsplit=5)  # address perms offset dev inode [path, spaces kept]
                path = fields[5].strip() if len(fields) == 6 else ""
                if ".so" in path and path not in seen:
                    seen.append(path)
    except OSError:
        pass
    return seen


def faults_per_block(mib: int = 64, repeats: int = 8) -> float:
    """Minor page faults per `malloc` + touch + `free` of a `mib` MiB block: what each XLA:CPU
    step pays per block of that size (4 KiB pages: mib * 256; huge pages: a few)."""
    import ctypes

    libc = ctypes.CDLL(None)
    libc.malloc.restype = ctypes.c_void_p
    libc.malloc.argtypes = [ctypes.c_size_t]
    libc.free.argtypes = [ctypes.c_void_p]
    size = mib << 20
    before = minor_faults()
    for _ in range(repeats):
        block = libc.malloc(size)
        if not block:
            raise MemoryError(f"malloc({size}) failed")
        ctypes.memset(block, 1, size)
        libc.free(block)
    return (minor_faults() - before) / repeats
