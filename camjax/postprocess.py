"""Prediction post-processing: blending, count-constrained class balancing, submission files.

Blending merges probabilities over test-time views, image tiles and models; balancing uses
the challenge's known test composition (equal counts per camera within the unaltered and
the manipulated halves) to re-assign classes where the model is least sure.
"""

from __future__ import annotations

import contextlib
import csv
import heapq
import itertools
import logging
import os
import tempfile
from collections.abc import Iterator, Mapping, Sequence

import numpy as np

from camjax.cameras import manipulation_by_name

log = logging.getLogger(__name__)

GEOMETRIC_EPS = 1e-12
# Floor for log-probabilities in balancing: keeps the assignment feasible when a class
# has probability 0 everywhere, while still counting it as (almost) impossible.
LOG_PROB_FLOOR = -1e4


AGGREGATIONS = ("mean", "geometric", "power")  # how `blend` combines views, tiles and models


def blend(
    probs: np.ndarray,
    axis: int,
    agg: str = "mean",
    p: float = 2.0,
    weights: Sequence[float] | None = None,
) -> np.ndarray:
    """Blends probabilities along `axis` and renormalises along the class (last) axis.

    agg: 'mean' (arithmetic), 'geometric' (exp of the mean log, eps 1e-12) or 'power'
    (mean of probs ** p, no 1/p root: p = 2 is the "mean of squares"; the root would not
    change the argmax and renormalisation follows anyway). `weights`, one per entry along
    `axis` (e.g. per model), make every mean a weighted mean.
    """
    probs = np.asarray(probs, dtype=np.float64)
    if not -probs.ndim <= axis < probs.ndim - 1 or axis == -1:
        raise ValueError(f"blend axis {axis} must be a non-class axis of probs with shape {probs.shape}")
    axis %= probs.ndim
    n = probs.shape[axis]
    if weights is None:
        w = np.full(n, 1.0 / n)
    else:
        w = np.asarray(weights, dtype=np.float64)
        if w.shape != (n,) or np.any(w < 0) or w.sum() <= 0:
            raise ValueError(f"blend weights must be {n} non-negative numbers with a positive sum, got {weights}")
        w = w / w.sum()
    shape = [1] * probs.ndim
    shape[axis] = n
    w = w.reshape(shape)
    if agg == "mean":
        out = (w * probs).sum(axis=axis)
    elif agg == "geometric":
        out = np.exp((w * np.log(probs + GEOMETRIC_EPS)).sum(axis=axis))
    elif agg == "power":
        out = (w * probs**p).sum(axis=axis)
    else:
        raise ValueError(f"unknown blend agg {agg!r}; expected mean, geometric or power")
    return out / out.sum(axis=-1, keepdims=True)


def default_counts(log_probs: np.ndarray) -> np.ndarray:
    """Equal counts per class for one group; the n % C leftover slots go to the classes
    with the most total probability mass in the group (ties to the lower class index)."""
    n, c = log_probs.shape
    counts = np.full(c, n // c, dtype=np.int64)
    mass = np.exp(log_probs).sum(axis=0)
    counts[np.argsort(-mass, kind="stable")[: n % c]] += 1
    return counts


def _group_problems(log_probs, groups, counts):
    """Yields (row indices, log-probs, per-class counts) for each group, validated."""
    log_probs = np.asarray(log_probs, dtype=np.float64)
    groups = np.asarray(groups)
    if log_probs.ndim != 2 or groups.shape != log_probs.shape[:1]:
        raise ValueError(f"balance needs log_probs [N, C] and groups [N], got {log_probs.shape} and {groups.shape}")
    if np.isnan(log_probs).any():
        raise ValueError("balance: log_probs contain NaN")
    log_probs = np.maximum(log_probs, LOG_PROB_FLOOR)
    num_classes = log_probs.shape[1]
    for g in np.unique(groups).tolist():
        rows = np.flatnonzero(groups == g)
        lp = log_probs[rows]
        if counts is None:
            cnt = default_counts(lp)
        else:
            if g not in counts:
                raise ValueError(f"balance: counts has no entry for group {g!r}")
            cnt = np.asarray(counts[g], dtype=np.int64)
            if cnt.shape != (num_classes,) or np.any(cnt < 0) or cnt.sum() != len(rows):
                raise ValueError(
                    f"balance: counts for group {g!r} must be {num_classes} non-negative ints "
                    f"summing to the group size {len(rows)}, got {counts[g]}"
                )
        yield rows, lp, cnt


def balance(log_probs: np.ndarray, groups: np.ndarray, counts: Mapping[int, Sequence[int]] | None = None) -> np.ndarray:
    """The class assignment maximising total log-probability with exact per-group class counts.

    counts maps a group id to C counts summing to the group's size (default: `default_counts`).
    Solved exactly per group as a min-cost flow from rows to C class nodes (`assign_with_counts`),
    in n x C memory: one column per class slot would make it an n x n Hungarian problem.
    """
    assign = np.empty(len(np.asarray(groups)), dtype=np.int64)
    for rows, lp, cnt in _group_problems(log_probs, groups, counts):
        assign[rows] = assign_with_counts(lp, cnt)
    return assign


def balance_probs(
    probs: np.ndarray, groups: np.ndarray, counts: Mapping[int, Sequence[int]] | None = None
) -> np.ndarray:
    """`balance` on probabilities (clipped at 1e-12 before the log)."""
    return balance(np.log(np.clip(probs, 1e-12, 1.0)), groups, counts)


def assign_with_counts(log_probs: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """argmax over assignments with exactly counts[k] rows in class k of the summed log_probs.

    Successive shortest paths: rows join one at a time along the cheapest chain "new row
    enters class k0, a row of k0 moves to k1, ..., ending in a class with room" (Bellman-Ford
    over the C class nodes; the cheapest move out of each class to each other class comes from
    a heap per class pair). Each step keeps the partial assignment optimal, so the last is.

    Every comparison uses one absolute tolerance. Within it the partial assignment is only
    nearly optimal (ties at the probability floor leave cycles of moves worth a few times the
    tolerance), and a search can close such a cycle: its moves are then made - they keep the
    counts and gain more than the tolerance - and the search is repeated.
    """
    lp = np.asarray(log_probs, np.float64)
    n, num_classes = lp.shape
    finite = np.abs(lp[np.isfinite(lp)])
    tol = 1e-12 * (1.0 + (finite.max() if finite.size else 0.0))
    assign = np.full(n, -1, np.int64)
    load = np.zeros(num_classes, np.int64)
    moves: list[list[list[tuple[float, int]]]] = [[[] for _ in range(num_classes)] for _ in range(num_classes)]

    def place(row: int, k: int) -> None:
        assign[row] = k
        for other in range(num_classes):
            if other != k:  # cost of moving this row on from k: the log-probability it gives up
                heapq.heappush(moves[k][other], (lp[row, k] - lp[row, other], row))

    def cheapest_move(k: int, other: int) -> tuple[float, int]:
        heap = moves[k][other]
        while heap and assign[heap[0][1]] != k:  # stale: that row has moved since
            heapq.heappop(heap)
        return heap[0] if heap else (np.inf, -1)

    for row in range(n):
        while True:
            cost = np.full((num_classes, num_classes), np.inf)
            mover = np.full((num_classes, num_classes), -1, np.int64)
            for k in np.flatnonzero(load):
                for other in range(num_classes):
                    if other != k:
                        cost[k, other], mover[k, other] = cheapest_move(k, other)
            chains, cycle = _shortest_chains(-lp[row], cost, tol)
            if cycle is None:
                came_from, dist = chains
                room = np.flatnonzero(load < counts)
                end = room[dist[room].argmin()]
                chain, cycle = _walk(came_from, end)
            if cycle is None:
                break
            if not sum(cost[k, to] for k, to in cycle) < 0:  # each cancelled cycle gains: the loop ends
                raise RuntimeError(f"assign_with_counts: a cycle of moves {cycle} that gains nothing")
            for k, to in cycle:  # one row out of and one into each class on the cycle
                place(mover[k, to], to)
        for k, to in chain:
            place(mover[k, to], to)
        place(row, chain[-1][0] if chain else end)
        load[end] += 1
    return assign


def _shortest_chains(dist: np.ndarray, cost: np.ndarray, tol: float):
    """Bellman-Ford from every class at once (`dist`: the cost of the new row entering it).
    Returns ((came_from, dist), None), came_from[k] = -1 where the new row enters k itself, or
    (None, a cycle of moves [(k, to), ...]) met while the distances still fall."""
    num_classes = len(dist)
    came_from = np.full(num_classes, -1, np.int64)
    for step in itertools.count(1):
        via = dist[:, None] + cost
        best_from = via.argmin(0)
        best = via[best_from, np.arange(num_classes)]
        better = best < dist - tol
        if not better.any():
            return (came_from, dist), None
        dist = np.where(better, best, dist)
        came_from = np.where(better, best_from, came_from)
        if step >= num_classes:  # no convergence in C - 1 rounds: a gainful cycle of moves
            for k in range(num_classes):
                _, cycle = _walk(came_from, k)
                if cycle is not None:
                    return None, cycle


def _walk(came_from: np.ndarray, end: int):
    """(the moves [(k, to), ...] from where the new row enters to `end`, None), or (None, the
    cycle of moves the walk ran into)."""
    chain, seen, k = [], {}, end
    while came_from[k] != -1:
        if k in seen:
            return None, chain[seen[k] :]
        seen[k] = len(chain)
        chain.append((int(came_from[k]), int(k)))
        k = came_from[k]
    return chain, None


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike, mode: str = "w", **open_kwargs) -> Iterator:
    """Opens a temp file next to `path` and moves it over `path` only if the block succeeds,
    so readers never see a half-written file.

    The file gets the mode `open` would give it (0666 less the umask: collaborators on a shared
    cluster can read run.json and submissions, where mkstemp alone makes everything 0600). It is
    fsynced before the rename and the folder after, so a crash or power loss leaves the old
    file or the new one under `path`, never an empty one.
    """
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=f".{os.path.basename(path)}.", suffix=".tmp")
    try:
        os.fchmod(fd, 0o666 & ~_umask())
        with os.fdopen(fd, mode, **open_kwargs) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise
    _fsync_folder(folder)


def _umask() -> int:
    """The process umask (reading it means setting it: restored at once)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _fsync_folder(folder: str) -> None:
    fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_submission(path: str | os.PathLike, fnames: Sequence[str], camera_names: Sequence[str]) -> None:
    """Writes the challenge's submission CSV (header `fname,camera`), atomically."""
    if len(fnames) != len(camera_names):
        raise ValueError(f"write_submission: {len(fnames)} file names but {len(camera_names)} cameras")
    with atomic_write(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["fname", "camera"])
        writer.writerows(zip(fnames, camera_names))


def _read_csv(path, columns: tuple[str, ...], check=None) -> list[tuple[str, ...]]:
    """Rows of a CSV with exactly `columns`; `check(row)` may raise ValueError for a bad row."""
    path = os.fspath(path)
    with open(path, newline="") as f:
        reader = csv.reader(f)
        header = next(reader, None)
        if header is None or tuple(h.strip() for h in header) != columns:
            raise ValueError(f"{path}: expected header {','.join(columns)}, got {header}")
        rows = []
        for line, row in enumerate(reader, start=2):
            if not row:
                continue
            if len(row) != len(columns) or not all(v.strip() for v in row):
                raise ValueError(f"{path}:{line}: expected {len(columns)} non-empty fields {columns}, got {row}")
            row = tuple(v.strip() for v in row)
            if check is not None:
                try:
                    check(row)
                except ValueError as e:
                    raise ValueError(f"{path}:{line}: {e}") from None
            rows.append(row)
    return rows


def read_submission(path: str | os.PathLike) -> dict[str, str]:
    """fname -> camera from a submission CSV; duplicate file names are an error."""
    rows = _read_csv(path, ("fname", "camera"))
    out = dict(rows)
    if len(out) != len(rows):
        raise ValueError(f"{os.fspath(path)}: duplicate file names")
    return out


def read_labels(path: str | os.PathLike) -> list[tuple[str, str, str]]:
    """(fname, camera, manipulation) rows of a `test_labels.csv`; manipulation is a name of
    `camjax.cameras.MANIPULATION_NAMES` ('none' for unaltered files)."""
    return _read_csv(path, ("fname", "camera", "manipulation"), check=lambda row: manipulation_by_name(row[2]))
