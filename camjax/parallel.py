"""Data parallelism: one step function, wrapped by `jax.jit` with shardings or by `jax.pmap`.

'sharded' (default): parameters replicated and the batch split along a 1-D 'data' mesh
axis; XLA inserts the gradient all-reduce and BatchNorm sees global batch statistics.
'pmap': the classic replicated layout with an explicit axis name for pmean and BatchNorm.
Both take host batches of the process-local shard and return global metrics.
"""

from __future__ import annotations

import queue
import threading
from typing import Any, Callable, Iterator

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

PMAP_AXIS = "batch"
MESH_AXIS = "data"


def bn_axis_name(mode: str) -> str | None:
    """The axis name BatchNorm must average over: only pmap needs one."""
    check_mode(mode)
    return PMAP_AXIS if mode == "pmap" else None


def check_mode(mode: str) -> None:
    if mode not in ("sharded", "pmap"):
        raise ValueError(f"unknown parallel mode {mode!r}; expected 'sharded' or 'pmap'")


class DataParallel:
    """Places state and batches on the local devices and wraps step functions for `mode`."""

    def __init__(self, mode: str, devices=None):
        check_mode(mode)
        self.mode = mode
        self.devices = list(devices or jax.devices())
        self.local_devices = [d for d in self.devices if d.process_index == jax.process_index()]
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

    def abstract_state(self, state):
        """Shape/dtype/sharding structs of the placed state, for orbax restore targets."""
        return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), state)

    # --- batches ---------------------------------------------------------------------
    def put_batch(self, batch: dict[str, np.ndarray]):
        if self.mode == "pmap":
            n = len(self.local_devices)
            return jax.device_put(jax.tree.map(lambda x: x.reshape(n, x.shape[0] // n, *x.shape[1:]), batch), self.per_device)
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
        """Device outputs of `predict` -> a host array with the batch axis first."""
        x = np.asarray(jax.device_get(x))
        if self.mode == "pmap":
            return x.reshape(-1, *x.shape[2:])
        return x

    def fetch_metrics(self, metrics) -> dict[str, float]:
        metrics = jax.device_get(metrics)
        if self.mode == "pmap":
            metrics = jax.tree.map(lambda x: x[0], metrics)
        return {k: float(v) for k, v in metrics.items()}


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
