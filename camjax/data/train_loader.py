"""The training loader: endless Grain batches of patches, sharded by process, resumable.

Training decodes each file once and cuts `patches_per_image` patches from it (decoding
dominates), on the crop grid of `camjax.data.grid`. Every random draw comes from a generator
seeded by (seed, shard, epoch, position), so a run restored from a Grain iterator state sees
exactly the batches it would have seen. An unreadable file is skipped, counted in the batch's
`skipped` field and named once per process.
"""

from __future__ import annotations

import functools
import logging
import os
import sys
import threading
import time
from collections.abc import Sequence

import grain
import numpy as np
from absl import flags
from grain.experimental import RebatchIterDataset

from camjax.cameras import MANIPULATIONS, canonical_class_name
from camjax.data import manipulations
from camjax.data.decode import BAD_FILES, BadImageError, Reader, load_frame, read_bytes
from camjax.data.grid import crop_step, d4_host
from camjax.data.sources import Record

CLASS_BALANCE = ("sampling", "weights", "none")  # data.class_balance
MANIPULATE_ON = ("host", "device")  # data.manipulate_on: Grain workers, or the jitted step
UNKNOWN_MANIPULATION = -1  # its one-hot is all zeros: no auxiliary-loss target; the device ops treat it as none

log = logging.getLogger(__name__)
# Slot groups a reader decodes ahead of the one being batched (its read thread keeps decoding
# while the group before is cut into batches and sent). With the worker's output buffer this is
# how far a loader runs ahead of its consumer: a throughput window must be much longer.
READ_AHEAD_GROUPS = 2


def _feasible_manipulations(height: int, width: int, patch: int) -> list[int]:
    side = min(height, width)
    return [m.id for m in MANIPULATIONS[1:] if manipulations.source_size(patch, m) <= side]


def cut_train_patches(
    frame: np.ndarray,
    rng: np.random.Generator,
    *,
    patch: int,
    count: int,
    step: int,
    manip_prob: float,
    views: Sequence[int],
    raw_size: int = 0,
    shared_prob: float = 0.0,
) -> dict[str, np.ndarray]:
    """`count` random patches of one frame, each possibly manipulated, then D4-transformed.

    A manipulation m crops `source_size(patch, m)` at a random grid offset and turns it into
    a `patch`-sized result; manipulations whose source would not fit the frame are not drawn.
    `origin` is the top-left corner of each source crop in the frame.

    With `shared_prob`, an unaltered patch is re-encoded as a photo shared online is (JPEG at
    a quality drawn from `manipulations.SHARED_QUALITIES`, `shared` holds it, 0 otherwise) and
    keeps the label 'none': nothing tells a user that a photo off the web was recompressed, so
    the model must learn that the last encoder's tables need not be the camera's. The draw is
    made only when `shared_prob` > 0, so runs without it see the patches they always saw.

    With `raw_size` (data.manipulate_on='device'), the same draws are made but nothing is
    applied: `raw` holds the raw_size-square region centred on each source crop (zeros where
    it leaves the frame, which no manipulation reads) for `device_ops.apply_on_device`, which
    then produces exactly the patches the host would have.
    """
    h, w = frame.shape[:2]
    feasible = _feasible_manipulations(h, w, patch)
    side = raw_size or patch
    images = np.zeros((count, side, side, 3), np.uint8)
    manip = np.zeros(count, np.int32)
    d4 = np.zeros(count, np.int32)
    origin = np.zeros((count, 2), np.int32)
    shared = np.zeros(count, np.int32)
    low, high = manipulations.SHARED_QUALITIES
    for i in range(count):
        m = 0
        if feasible and rng.random() < manip_prob:
            m = int(rng.choice(feasible))
        size = manipulations.source_size(patch, MANIPULATIONS[m])
        top = step * int(rng.integers(0, (h - size) // step + 1))
        left = step * int(rng.integers(0, (w - size) // step + 1))
        k = int(rng.choice(views)) if len(views) > 1 else int(views[0])
        if raw_size:
            _paste_region(frame, images[i], top - (raw_size - size) // 2, left - (raw_size - size) // 2)
        else:
            crop = frame[top : top + size, left : left + size]
            if m:
                crop = manipulations.manipulate_patch(crop, patch, MANIPULATIONS[m])
            elif shared_prob > 0 and rng.random() < shared_prob:
                shared[i] = int(rng.integers(low, high + 1))
                crop = manipulations.jpeg_compress(np.ascontiguousarray(crop), shared[i])
            images[i] = d4_host(crop, k)
        manip[i], d4[i], origin[i] = m, k, (top, left)
    out = {"raw" if raw_size else "image": images, "manipulation": manip, "d4": d4, "origin": origin}
    if shared_prob > 0:
        out["shared"] = shared
    return out


def _paste_region(frame: np.ndarray, out: np.ndarray, top: int, left: int) -> None:
    """out[:] = frame[top:top+S, left:left+S], where the region may reach past the frame."""
    s = out.shape[0]
    h, w = frame.shape[:2]
    t0, l0 = max(top, 0), max(left, 0)
    t1, l1 = min(top + s, h), min(left + s, w)
    out[t0 - top : t1 - top, l0 - left : l1 - left] = frame[t0:t1, l0:l1]


class _TrainPlan:
    """What one process's shard reads: the per-epoch file order and the patches of a slot.

    Slot s is position s % n of epoch s // n (n = files in the shard); groups of consecutive
    slots are decoded together and their patches shuffled, so a batch mixes images.
    """

    def __init__(
        self,
        records: list[Record],
        data_config,
        *,
        seed: int,
        shard_index: int,
        views,
        group: int,
        read: Reader = read_bytes,
    ):
        self.read = read
        if not records:
            raise ValueError(f"shard {shard_index} has no training files")
        self.paths = [r.path for r in records]
        self.labels = np.array([r.label for r in records], np.int32)
        exempt = {canonical_class_name(c) for c in data_config.d4_exempt_classes}
        self.exempt = np.array([r.class_name in exempt for r in records])
        self.premanipulated = np.array([r.manipulated for r in records])
        self.balance = data_config.class_balance
        if self.balance not in CLASS_BALANCE:
            raise ValueError(f"data.class_balance must be sampling | weights | none, got {self.balance!r}")
        self.seed, self.shard_index = int(seed), int(shard_index)
        self.patch, self.count = int(data_config.patch), int(data_config.patches_per_image)
        self.manip_prob, self.views, self.group = float(data_config.manip_prob), tuple(views), group
        self.crop_step = int(data_config.crop_step)
        where = data_config.get("manipulate_on", "host")
        if where not in MANIPULATE_ON:
            raise ValueError(f"data.manipulate_on must be host | device, got {where!r}")
        self.shared_prob = float(data_config.get("shared_prob", 0.0))
        if self.shared_prob and where == "device":
            raise ValueError("data.shared_prob needs data.manipulate_on='host' (no device version of it yet)")
        self.raw_size = manipulations.max_source_size(self.patch) if where == "device" else 0
        self._order_cache: tuple[int, np.ndarray] | None = None

    def order(self, epoch: int) -> np.ndarray:
        """File indices in the order epoch `epoch` reads them (class-balanced if asked)."""
        cached = self._order_cache
        if cached is not None and cached[0] == epoch:
            return cached[1]
        rng = np.random.default_rng((self.seed, 1, self.shard_index, epoch))
        n = len(self.paths)
        if self.balance == "sampling":
            by_class = [np.flatnonzero(self.labels == c) for c in np.unique(self.labels)]
            quota = np.full(len(by_class), n // len(by_class))
            quota[rng.choice(len(by_class), n % len(by_class), replace=False)] += 1
            picks = []
            for files, q in zip(by_class, quota):
                cycles = [rng.permutation(files) for _ in range(-(-q // len(files)))]
                picks.append(np.concatenate(cycles)[:q])
            order = rng.permutation(np.concatenate(picks))
        else:
            order = rng.permutation(n)
        self._order_cache = (epoch, order)
        return order

    def _frame(self, i: int) -> tuple[np.ndarray, bool]:
        path = self.paths[i]
        if path in BAD_FILES:
            raise BadImageError(path, BAD_FILES[path])
        try:
            return load_frame(path, self.patch, self.read)
        except BadImageError as e:
            BAD_FILES[path] = e.reason
            log.warning("skipping training file %s: %s", path, e.reason)
            raise

    def _replacements(self, order: np.ndarray, pos: int):
        """The files after position `pos` of the epoch, those of the same class first."""
        rolled = np.roll(order, -pos)[1:]
        same = self.labels[rolled] == self.labels[order[pos]]
        return np.concatenate([rolled[same], rolled[~same]])

    def slot(self, s: int) -> dict[str, np.ndarray]:
        n = len(self.paths)
        epoch, pos = divmod(s, n)
        order = self.order(epoch)
        i, skipped = int(order[pos]), 0
        try:
            frame, jpeg = self._frame(i)
        except BadImageError:  # replaced by the next good file, keeping the class balance
            skipped = 1
            for i in self._replacements(order, pos):
                try:
                    frame, jpeg = self._frame(int(i))
                    break
                except BadImageError:
                    pass
            else:
                raise RuntimeError(
                    f"none of the {n} training files of shard {self.shard_index} can be decoded "
                    f"(e.g. {self.paths[0]}: {BAD_FILES.get(self.paths[0], '?')})"
                ) from None
        rng = np.random.default_rng((self.seed, 0, self.shard_index, epoch, pos))
        out = cut_train_patches(
            frame,
            rng,
            patch=self.patch,
            count=self.count,
            step=crop_step(self.crop_step, jpeg),
            manip_prob=0.0 if self.premanipulated[i] else self.manip_prob,
            views=(0,) if self.exempt[i] else self.views,
            raw_size=self.raw_size,
            shared_prob=0.0 if self.premanipulated[i] else self.shared_prob,
        )
        if self.premanipulated[i]:  # flagged as manipulated; which manipulation is unknown
            out["manipulation"][:] = UNKNOWN_MANIPULATION
        del out["origin"]
        out.pop("shared", None)
        out["label"] = np.full(self.count, self.labels[i], np.int32)
        out["is_manipulated"] = (out["manipulation"] != 0).astype(np.float32)
        out["skipped"] = np.zeros(self.count, np.int32)
        out["skipped"][0] = skipped
        return out

    def group_of_slots(self, g: int) -> dict[str, np.ndarray]:
        """The patches of `group` consecutive slots, shuffled together.

        Each slot's patches go straight to their shuffled rows of one preallocated output, so a
        worker holds the group once (not a concatenation plus a permuted copy): at patch 512 and
        32 files of 8 patches that is 200 MB instead of 600 MB.
        """
        n = self.group * self.count
        perm = np.random.default_rng((self.seed, 2, self.shard_index, g)).permutation(n)
        destination = np.argsort(perm)  # row i of the concatenated slots lands at destination[i]
        out = None
        for j in range(self.group):
            part = self.slot(g * self.group + j)
            if out is None:
                out = {k: np.empty((n, *v.shape[1:]), v.dtype) for k, v in part.items()}
            rows = destination[j * self.count : (j + 1) * self.count]
            for k, v in part.items():
                out[k][rows] = v
        return out


def shard_records(records: Sequence[Record], shard_index: int, shard_count: int) -> list[Record]:
    """Every shard_count-th file from shard_index: disjoint shards covering all files, each
    with about the same share of every class (records are grouped by class)."""
    if not 0 <= shard_index < shard_count:
        raise ValueError(f"shard_index {shard_index} not in [0, {shard_count})")
    return list(records[shard_index::shard_count])


def make_train_dataset(
    index,
    data_config,
    *,
    batch_size: int,
    seed: int,
    shard_index: int = 0,
    shard_count: int = 1,
    read: Reader = read_bytes,
) -> grain.IterDataset:
    """The endless, in-process training dataset of one process's shard (see the module doc)."""
    # Imported here so that worker processes, which unpickle this module's objects, need not import JAX.
    from camjax.tta import views

    records = shard_records(index.train, shard_index, shard_count)
    # Patches of `mix_files` consecutive files are shuffled together: with fewer, a batch holds
    # the patches of a handful of images (correlated gradients, skewed BatchNorm statistics).
    group = max(1, int(data_config.mix_files))
    plan = _TrainPlan(
        records, data_config, seed=seed, shard_index=shard_index, views=views(data_config.d4), group=group, read=read
    )
    ds = grain.MapDataset.range(sys.maxsize).map(plan.group_of_slots)
    ds = ds.to_iter_dataset(grain.ReadOptions(num_threads=1, prefetch_buffer_size=READ_AHEAD_GROUPS))
    return RebatchIterDataset(ds, batch_size, drop_remainder=True)


def make_train_loader(
    index,
    data_config,
    *,
    batch_size: int,
    seed: int,
    shard_index: int = 0,
    shard_count: int = 1,
    read: Reader = read_bytes,
) -> grain.DatasetIterator:
    """An iterator over training batches, read by `data_config.workers` processes; its
    `get_state()`/`set_state()` (or grain.checkpoint with orbax) make resumption exact."""
    ds = make_train_dataset(
        index,
        data_config,
        batch_size=batch_size,
        seed=seed,
        shard_index=shard_index,
        shard_count=shard_count,
        read=read,
    )
    if data_config.workers > 0:
        if not flags.FLAGS.is_parsed():  # Grain's workers read absl flags; outside app.run use defaults
            flags.FLAGS.mark_as_parsed()
        ds = ds.mp_prefetch(
            grain.MultiprocessingOptions(num_workers=data_config.workers, per_worker_buffer_size=data_config.prefetch),
            worker_init_fn=functools.partial(exit_with_parent, os.getpid()),
        )
    return iter(ds)


def exit_with_parent(parent_pid: int, worker_index: int = 0, worker_count: int = 1, poll_seconds: float = 0.5) -> None:
    """Runs in each Grain worker: the worker exits once the trainer that started it is gone.

    A trainer killed with SIGKILL cannot stop its workers, and Grain's spawned workers do not
    notice: they would sleep on, reparented, holding a few hundred MB each, and pile up on a node
    whose jobs are preempted and requeued. A daemon thread polls the parent pid instead of
    PR_SET_PDEATHSIG, which fires when the *thread* that started the worker ends, not the process.
    """
    del worker_index, worker_count

    def watch():
        while os.getppid() == parent_pid:
            time.sleep(poll_seconds)
        os._exit(1)

    threading.Thread(target=watch, name="exit-with-parent", daemon=True).start()


class _ShardGroup:
    """Several shards' loaders read side by side; each batch is theirs concatenated in shard order."""

    def __init__(self, loaders: list):
        self.loaders = loaders

    def __iter__(self):
        return self

    def __next__(self) -> dict[str, np.ndarray]:
        parts = [next(it) for it in self.loaders]
        return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}

    def get_state(self):
        # Shards advance in lockstep (same batch size, same patches per slot group), so one
        # state fits every shard: a checkpoint moves between process counts.
        states = [it.get_state() for it in self.loaders]
        if any(s != states[0] for s in states[1:]):
            raise RuntimeError(f"training shards out of step: {states}")
        return states[0]

    def set_state(self, state) -> None:
        for it in self.loaders:
            it.set_state(state)

    def close(self) -> None:
        for it in self.loaders:
            it.close()


def make_process_loader(
    index,
    data_config,
    *,
    global_batch: int,
    seed: int,
    process_index: int = 0,
    process_count: int = 1,
    read: Reader = read_bytes,
):
    """This process's rows of every global training batch.

    The global batch is one batch of each of `data.shards` disjoint file shards (0: one per
    process), concatenated in shard order; process p reads shards [p*k, (p+1)*k), k =
    shards / processes. The batches thus depend on data.shards, not on the process count: runs
    with the same data.shards on 1 or N processes train on the same global batches, and a
    checkpoint's data position carries over between them.
    """
    shards = int(data_config.shards) or process_count
    if shards % process_count or global_batch % shards:
        raise ValueError(
            f"data.shards={shards} must be a multiple of the {process_count} processes and divide "
            f"batch_size={global_batch}"
        )
    k = shards // process_count
    loaders = [
        make_train_loader(
            index,
            data_config,
            batch_size=global_batch // shards,
            seed=seed,
            shard_index=process_index * k + j,
            shard_count=shards,
            read=read,
        )
        for j in range(k)
    ]
    return loaders[0] if k == 1 else _ShardGroup(loaders)
