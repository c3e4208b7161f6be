"""Fail points: kill this process with SIGKILL at a named point, for the fault-injection tests.

`CAMJAX_FAILPOINT=save:12` kills the run right after the checkpoint of step 12 has been
handed to orbax (its asynchronous write still in flight); `step:7` right after train step 7
is dispatched. Several points separate with commas. Unset (every normal run), a check is one
dictionary lookup.
"""

from __future__ import annotations

import os
import signal

ENV = "CAMJAX_FAILPOINT"


def _points() -> set[tuple[str, int]]:
    spec = os.environ.get(ENV, "")
    points = set()
    for item in filter(None, (s.strip() for s in spec.split(","))):
        name, _, step = item.partition(":")
        if not step.isdigit():
            raise ValueError(f"{ENV}={spec!r}: expected NAME:STEP[,NAME:STEP...], got {item!r}")
        points.add((name, int(step)))
    return points


_POINTS = _points()


def check(name: str, step: int) -> None:
    """SIGKILLs the process when `name:step` is a configured fail point."""
    if _POINTS and (name, int(step)) in _POINTS:
        os.kill(os.getpid(), signal.SIGKILL)
