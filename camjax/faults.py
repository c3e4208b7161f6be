"""Fail points: kill this process with SIGKILL at a named point, for the fault-injection tests.

`CAMJAX_FAILPOINT=save:12` kills the run right after the checkpoint of step 12 has been
handed to orbax (its asynchronous write still in flight); `step:7` right after train step 7
is dispatched; `validate:6` after the first batch of the validation at step 6; `start:0` once
the data loader is built, before its workers have started. `NAME:STEP@SECONDS` arms a timer
there instead, so the kill lands that long after the point, wherever the run then is (inside a
step, a save, a validation, the workers' start-up): that is how the tests and
`benchmarks/soak.py` kill at random moments. `nospace:K` and `readonly:K` do not kill: the
checkpoint save of step K fails as on a full (ENOSPC) or read-only (EROFS) disk. Several points
separate with commas. Unset (every normal run), a check is one dictionary lookup.
"""

from __future__ import annotations

import errno
import os
import signal
import threading

ENV = "CAMJAX_FAILPOINT"


def _points() -> dict[tuple[str, int], float]:
    spec = os.environ.get(ENV, "")
    points = {}
    for item in filter(None, (s.strip() for s in spec.split(","))):
        name, _, rest = item.partition(":")
        step, _, delay = rest.partition("@")
        try:
            points[(name, int(step))] = float(delay) if delay else 0.0
        except ValueError:
            raise ValueError(f"{ENV}={spec!r}: expected NAME:STEP[@SECONDS][,...], got {item!r}") from None
    return points


_POINTS = _points()


def _kill() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def _take(name: str, step: int) -> float | None:
    """The delay of fail point `name:step`, removed so that it fires once; None if not set."""
    return _POINTS.pop((name, int(step)), None) if _POINTS else None


def check(name: str, step: int) -> None:
    """SIGKILLs the process (now, or after the point's delay) when `name:step` is a fail point."""
    delay = _take(name, step)
    if delay is not None:
        if delay:
            timer = threading.Timer(delay, _kill)
            timer.daemon = True
            timer.start()
        else:
            _kill()


_WRITE_ERRORS = {"nospace": errno.ENOSPC, "readonly": errno.EROFS}


def check_write(step: int, path: str) -> None:
    """Raises the OSError a full or read-only disk gives, when `nospace:step` or `readonly:step`
    is a fail point."""
    for name, code in _WRITE_ERRORS.items():
        if _take(name, step) is not None:
            raise OSError(code, os.strerror(code), path)
