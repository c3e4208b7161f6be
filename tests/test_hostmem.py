"""Huge pages for malloc: the tunable merge, when a command starts itself again, and that a
camjax command really runs with fewer page faults per block (camjax.hostmem says why)."""

import ctypes.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from camjax import hostmem

GLIBC, THP = (2, 36), "madvise"
PAGES_4K = 64 * 256  # 4 KiB pages in the 64 MiB block faults_per_block touches


@pytest.mark.parametrize(
    "tunables, merged",
    [
        ("", "glibc.malloc.hugetlb=1"),
        ("glibc.malloc.check=0", "glibc.malloc.check=0:glibc.malloc.hugetlb=1"),
        ("glibc.malloc.hugetlb=0:glibc.malloc.arena_max=2", "glibc.malloc.arena_max=2:glibc.malloc.hugetlb=1"),
    ],
)
def test_with_tunable_keeps_the_others(tunables, merged):
    assert hostmem.with_tunable(tunables) == merged


@pytest.mark.parametrize(
    "environ, glibc, thp, reason",
    [
        ({}, GLIBC, THP, None),
        ({}, GLIBC, "always", None),
        ({"GLIBC_TUNABLES": "glibc.malloc.check=0"}, GLIBC, THP, None),
        ({"CAMJAX_HUGE_PAGES": "0"}, GLIBC, THP, "CAMJAX_HUGE_PAGES=0"),
        ({"GLIBC_TUNABLES": "glibc.malloc.hugetlb=0"}, GLIBC, THP, "GLIBC_TUNABLES already sets glibc.malloc.hugetlb"),
        ({}, (2, 31), THP, "needs Linux with glibc >= 2.35"),
        ({}, GLIBC, "never", "transparent huge pages are never"),
    ],
)
def test_why_not(environ, glibc, thp, reason):
    assert hostmem.why_not(environ, glibc=glibc, thp=thp) == reason


def test_thp_mode_reads_the_bracketed_word(tmp_path):
    path = tmp_path / "enabled"
    path.write_text("always [madvise] never\n")
    assert hostmem.thp_mode(path) == "madvise"
    assert hostmem.thp_mode(tmp_path / "missing") is None


def unset_environ() -> dict:
    """This environment without the tunables, a preloaded library and the opt-out: a command
    started plainly."""
    return {k: v for k, v in os.environ.items() if k not in ("GLIBC_TUNABLES", "LD_PRELOAD", hostmem.OPT_OUT)}


def run_hostmem(**env) -> tuple[dict, int]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "camjax.hostmem"], env={**unset_environ(), **env}, stdout=subprocess.PIPE
    )
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 0
    return json.loads(out), proc.pid


def test_a_command_starts_itself_again_with_huge_pages():
    """`python -m camjax.<command>` runs with the tunable, in the process it was started as,
    and a 64 MiB malloc block faults far fewer pages in than its 16,384 4 KiB ones; with the
    opt-out, as started. Where this host cannot use the tunable, the command says why and runs
    as started."""
    reason = hostmem.why_not(unset_environ())
    seen, pid = run_hostmem()
    assert seen["pid"] == pid  # execve in place: no second process
    if reason is None:
        assert seen["glibc_tunables"] == hostmem.WANTED
        assert seen["faults_per_64mib_block"] < PAGES_4K / 8
    else:
        assert seen["glibc_tunables"] == "" and seen["why_not"] == reason

    opted_out, _ = run_hostmem(CAMJAX_HUGE_PAGES="0")
    assert opted_out["glibc_tunables"] == "" and opted_out["why_not"] == "CAMJAX_HUGE_PAGES=0"
    if hostmem.thp_mode() != "always":  # with THP always, the kernel gives huge pages unasked
        assert opted_out["faults_per_64mib_block"] >= 0.9 * PAGES_4K


def test_a_preloaded_allocator_survives_the_restart_and_is_recorded():
    """An allocator preloaded in glibc's place (`LD_PRELOAD`, as RESULTS measures tcmalloc) is
    still loaded after the command starts itself again, and every benchmark record names it
    (`hostmem.state`). glibc's own libanl stands in for it: on every glibc host, and loaded by
    nothing else in the command."""
    lib = ctypes.util.find_library("anl")
    assert lib, "no libanl on this host"
    seen, _ = run_hostmem(LD_PRELOAD=lib)
    assert seen["ld_preload"] == lib
    assert any(Path(path).name == lib for path in seen["mapped_libraries"])
    plain, _ = run_hostmem()
    assert plain["ld_preload"] == ""
    assert not any(Path(path).name == lib for path in plain["mapped_libraries"])
