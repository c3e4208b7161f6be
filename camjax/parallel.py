"""Data parallelism: one step function, wrapped by `jax.jit` with shardings or by `jax.pmap`,
on one process or on many joined by JAX's multi-controller runtime (`initialize`).

'sharded' (default): parameters replicated and the batch split along a 1-D 'data' mesh
axis over every process's devices; XLA inserts the gradient all-reduce and BatchNorm sees
global batch statistics. 'pmap': the classic replicated layout with an explicit axis name
for pmean and BatchNorm. Both take host batches of the process-local shard (process p holds
rows [p*b, (p+1)*b) of the global batch) and return global metrics.
"""

from __future__ import annotations

import logging
import os
import queue
import threading
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import jax
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

PMAP_AXIS = "batch"
MESH_AXIS = "data"
log = logging.getLogger("camjax")

# The SLURM variables jax's own SlurmCluster needs (set by `srun`, not by `sbatch` alone).
_SLURM_STEP_VARS = ("SLURM_JOB_ID", "SLURM_STEP_NODELIST", "SLURM_NTASKS", "SLURM_PROCID", "SLURM_LOCALID")


def distributed_params(
    coordinator_address: str | None = None,
    num_processes: int | None = None,
    process_id: int | None = None,
    env: Mapping[str, str] | None = None,
) -> dict | None:
    """The `jax.distributed.initialize` arguments for this process, or None for a lone process.

    First match wins: explicit arguments (the train flags; jax fills what is missing from the
    cluster); JAX_COORDINATOR_ADDRESS + JAX_NUM_PROCESSES + JAX_PROCESS_ID; a Kubernetes
    indexed Job or JobSet (process id JOB_COMPLETION_INDEX; the manifest sets
    JAX_COORDINATOR_ADDRESS and JAX_NUM_PROCESSES, so no API access is needed); a SLURM step of
    several tasks (`srun`), left to jax's own SLURM detection (coordinator on the first node,
    one process per task, the task's GPU by SLURM_LOCALID unless JAX_LOCAL_DEVICE_IDS says otherwise).
    """
    env = os.environ if env is None else env
    if coordinator_address or num_processes is not None or process_id is not None:
        return dict(coordinator_address=coordinator_address or None, num_processes=num_processes, process_id=process_id)
    address, count = env.get("JAX_COORDINATOR_ADDRESS"), env.get("JAX_NUM_PROCESSES")
    pid = env.get("JAX_PROCESS_ID", env.get("JOB_COMPLETION_INDEX"))
    if address or count or "JAX_PROCESS_ID" in env:
        missing = [
            name
            for name, v in (
                ("JAX_COORDINATOR_ADDRESS", address),
                ("JAX_NUM_PROCESSES", count),
                ("JAX_PROCESS_ID or JOB_COMPLETION_INDEX", pid),
            )
            if not v
        ]
        if missing:
            raise ValueError(f"multi-process environment incomplete: {', '.join(missing)} not set")
        return dict(
            coordinator_address=address,
            num_processes=int(count),
            process_id=int(pid),
            cluster_detection_method="deactivate",
        )
    if "JOB_COMPLETION_INDEX" in env and "KUBERNETES_SERVICE_HOST" in env:
        raise ValueError(
            "Kubernetes indexed job without JAX_COORDINATOR_ADDRESS and JAX_NUM_PROCESSES: "
            "set them in the pod spec (see launch/jobset.yaml)"
        )
    if all(v in env for v in _SLURM_STEP_VARS) and int(env["SLURM_NTASKS"]) > 1:
        return dict(cluster_detection_method="slurm")
    return None


def initialize(
    coordinator_address: str | None = None, num_processes: int | None = None, process_id: int | None = None
) -> bool:
    """Joins JAX's multi-controller runtime when this process is one of several (see
    `distributed_params`); returns whether it did. Call before anything touches a device."""
    if jax.distributed.is_initialized():
        return True
    params = distributed_params(coordinator_address, num_processes, process_id)
    if params is None:
        return False
    # Cross-process collectives on CPU devices (the loopback recipe, CPU clusters) go through gloo.
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(**params)
    log.info(
        "process %d of %d: %d local devices, %d in all",
        jax.process_index(),
        jax.process_count(),
        jax.local_device_count(),
        jax.device_count(),
    )
    return True


def bn_axis_name(mode: str) -> str | None:
    """The axis name BatchNorm must average over: only pmap needs one."""
    check_mode(mode)
    return PMAP_AXIS if mode == "pmap" else None


MODES = ("sharded", "pmap")  # jit with NamedSharding over a data mesh | jax.pmap


def check_mode(mode: str) -> None:
    if mode not in MODES:
        raise ValueError(f"unknown parallel mode {mode!r}; expected 'sharded' or 'pmap'")


class DataParallel:
    """Places state and batches on the local devices and wraps step functions for `mode`."""

    def __init__(self, mode: str, devices=None):
        check_mode(mode)
        self.mode = mode
        # Process-major order: process p's devices hold rows [p*b, (p+1)*b) of a global batch.
        self.devices = sorted(devices or jax.devices(), key=lambda d: (d.process_index, d.id))
        self.local_devices = [d for d in self.devices if d.process_index == jax.process_index()]
        self.process_count = len({d.process_index for d in self.devices})
        self.mesh = Mesh(np.array(self.devices), (MESH_AXIS,))
        self.replicated = NamedSharding(self.mesh, P())
        self.data_sharding = NamedSharding(self.mesh, P(MESH_AXIS))
        # pmap's layout: a leading axis of one entry per local device.
        self.per_device = NamedSharding(Mesh(np.array(self.local_devices), (PMAP_AXIS,)), P(PMAP_AXIS))

    @property
    def num_devices(self) -> int:
        return len(self.devices)

    def check_batch_size(self, global_batch: int) -> int:
        """Returns the process-local batch size; errors when it does not divide evenly."""
        if global_batch % self.num_devices:
            raise ValueError(f"batch_size {global_batch} is not divisible by the {self.num_devices} devices")
        return global_batch // jax.process_count()

    def eval_batch_size(self, batch_size: int) -> int:
        """The largest multiple of the device count not above `batch_size` (at least one per
        device): evaluation batches are padded, so any requested size can be rounded."""
        return max(self.num_devices, batch_size // self.num_devices * self.num_devices)

    # --- state -----------------------------------------------------------------------
    def put_state(self, state):
        if self.mode == "pmap":
            n = len(self.local_devices)
            stacked = jax.tree.map(lambda x: np.broadcast_to(np.asarray(x), (n, *np.shape(x))), jax.device_get(state))
            return jax.device_put(stacked, self.per_device)
        return jax.device_put(state, self.replicated)

    def get_state(self, state):
        """A host copy of the (replicated) state, unreplicated."""
        if self.mode == "pmap":
            state = jax.tree.map(lambda x: x[0], state)
        return jax.device_get(state)

    @property
    def restore_sharding(self):
        """Where a checkpoint's arrays are restored before `put_state`: replicated over the mesh
        (every process reads the same checkpoint), or one local device for pmap."""
        return self.replicated if self.mode == "sharded" else jax.sharding.SingleDeviceSharding(self.local_devices[0])

    def saveable(self, state):
        """The state as global arrays, for orbax: pmap's per-device copies become one replicated
        array (on several processes each holds only its own copies)."""
        if self.mode == "sharded":
            return state
        if self.process_count == 1:
            return jax.tree.map(lambda x: x[0], state)

        def unstack(x):
            shards = sorted(x.addressable_shards, key=lambda s: self.local_devices.index(s.device))
            return jax.make_array_from_single_device_arrays(
                x.shape[1:], self.replicated, [s.data.reshape(x.shape[1:]) for s in shards]
            )

        return jax.tree.map(unstack, state)

    # --- batches ---------------------------------------------------------------------
    def process_rows(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """This process's rows of a batch every process holds whole (validation)."""
        if self.process_count == 1:
            return batch
        p, n = jax.process_index(), self.process_count
        return jax.tree.map(lambda x: x[p * len(x) // n : (p + 1) * len(x) // n], batch)

    def put_batch(self, batch: dict[str, np.ndarray]):
        if self.mode == "pmap":
            n = len(self.local_devices)
            return jax.device_put(
                jax.tree.map(lambda x: x.reshape(n, x.shape[0] // n, *x.shape[1:]), batch), self.per_device
            )
        return jax.tree.map(lambda x: jax.make_array_from_process_local_data(self.data_sharding, x), batch)

    # --- steps -----------------------------------------------------------------------
    def train_step(self, step_fn: Callable) -> Callable:
        """Wraps step_fn(state, batch, axis_name=...) -> (state, metrics); donates the state."""
        if self.mode == "pmap":
            return jax.pmap(lambda s, b: step_fn(s, b, axis_name=PMAP_AXIS), axis_name=PMAP_AXIS, donate_argnums=(0,))
        return jax.jit(
            lambda s, b: step_fn(s, b, axis_name=None),
            in_shardings=(self.replicated, self.data_sharding),
            out_shardings=(self.replicated, self.replicated),
            donate_argnums=(0,),
        )

    def predict(self, fn: Callable) -> Callable:
        """Wraps fn(state, batch) -> per-example outputs (batch-major); returns host-ready arrays."""
        if self.mode == "pmap":
            return jax.pmap(fn, axis_name=PMAP_AXIS)
        return jax.jit(fn, in_shardings=(self.replicated, self.data_sharding), out_shardings=self.data_sharding)

    def fetch_per_example(self, x) -> np.ndarray:
        """Device outputs of `predict` -> a host array with the batch axis first, every
        process's rows on every process."""
        if self.process_count > 1:
            if self.mode == "pmap":
                x = np.asarray(jax.device_get(x)).reshape(-1, *x.shape[2:])
            return np.asarray(multihost_utils.process_allgather(x, tiled=True))
        x = np.asarray(jax.device_get(x))
        if self.mode == "pmap":
            return x.reshape(-1, *x.shape[2:])
        return x

    def fetch_metrics(self, metrics) -> dict[str, float]:
        metrics = jax.device_get(metrics)
        if self.mode == "pmap":
            metrics = jax.tree.map(lambda x: x[0], metrics)
        return {k: float(v) for k, v in metrics.items()}

    # --- agreement between processes ------------------------------------------------
    def any_process(self, flag: bool) -> bool:
        """True on every process when `flag` is true on any (a host-side decision that all
        processes must take together, e.g. to stop: collectives hang if one leaves early)."""
        if self.process_count == 1:
            return bool(flag)
        return bool(np.any(multihost_utils.process_allgather(np.array(bool(flag)))))

    def should_stop(self, requested: bool, step: int, every: int) -> bool:
        """Whether to checkpoint and stop after `step`. A signal reaches processes at different
        steps, so several processes agree every `every` steps (where the loop syncs to log anyway)."""
        if self.process_count == 1:
            return requested
        return step % every == 0 and self.any_process(requested)


def prefetch(iterator: Iterator[Any], put: Callable[[Any], Any], size: int = 2) -> Iterator[Any]:
    """Runs `put` (host -> device transfer) on a background thread, `size` items ahead.

    Items are passed through `put` in order; an exception in the producer is re-raised in
    the consumer, and the thread stops when the consumer goes away.
    """
    q: queue.Queue = queue.Queue(maxsize=size)
    stop = threading.Event()
    sentinel = object()

    def producer():
        try:
            for item in iterator:
                out = put(item)
                while not stop.is_set():
                    try:
                        q.put(out, timeout=0.1)
                        break
                    except queue.Full:
                        continue
                if stop.is_set():
                    return
            q.put(sentinel)
        except BaseException as e:  # noqa: BLE001 - handed to the consumer
            q.put(e)

    thread = threading.Thread(target=producer, daemon=True, name="camjax-prefetch")
    thread.start()
    try:
        while True:
            item = q.get()
            if item is sentinel:
                return
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        # Let the producer finish the item in hand: a transfer still running while the
        # interpreter shuts down can abort the process.
        stop.set()
        thread.join(timeout=60)


_COMPILE_EVENT = "/jax/core/compile/backend_compile_duration"
_compiles = 0


def _count_compiles(event: str, duration: float, **kwargs) -> None:
    global _compiles
    if event == _COMPILE_EVENT:
        _compiles += 1


_cache_misses = 0


def _count_cache_misses(event: str, **kwargs) -> None:
    global _cache_misses
    if event == "/jax/compilation_cache/cache_misses":
        _cache_misses += 1


jax.monitoring.register_event_duration_secs_listener(_count_compiles)
jax.monitoring.register_event_listener(_count_cache_misses)


def compile_count() -> int:
    """XLA backend compilations so far in this process (persistent-cache hits included)."""
    return _compiles


def cache_miss_count() -> int:
    """Programs not found in JAX's persistent compilation cache so far in this process."""
    return _cache_misses
