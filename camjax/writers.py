"""Run outputs: metrics.jsonl (one JSON object per line) and TensorBoard events, process 0 only."""

from __future__ import annotations

import json
import math
import os
import sys

import jax

from camjax.postprocess import atomic_write


class MetricWriter:
    def __init__(self, workdir: str):
        self.enabled = jax.process_index() == 0
        self.path = os.path.join(workdir, "metrics.jsonl")
        self._tb = None
        if self.enabled:
            self._tb = _summary_writer_class()(os.path.join(workdir, "tensorboard"))

    def write(self, step: int, scalars: dict[str, float]) -> None:
        if not self.enabled:
            return
        # None (a metric with nothing to measure, e.g. a class without readable validation
        # files) and non-finite values are written as null and left out of TensorBoard.
        values = {k: (float(v) if v is not None and math.isfinite(float(v)) else None) for k, v in scalars.items()}
        with open(self.path, "a") as f:
            f.write(json.dumps({"step": int(step), **values}) + "\n")
        for k, v in values.items():
            if v is not None:
                self._tb.add_scalar(k, v, int(step))
        self._tb.flush()

    def truncate_after(self, step: int) -> None:
        """Drops rows logged after `step`: a resumed run rewrites them."""
        if not self.enabled or not os.path.exists(self.path):
            return
        with open(self.path) as f:
            rows = [line for line in f if line.strip() and json.loads(line)["step"] <= step]
        with atomic_write(self.path) as f:
            f.writelines(rows)

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()


def _summary_writer_class():
    """tensorboardX's SummaryWriter (no TensorFlow needed), imported without torch: its writer
    module imports torch when installed, only to accept torch tensors, which adds a second to
    every run's start. A torch the process already holds is left as it is."""
    block = "torch" not in sys.modules
    if block:
        sys.modules["torch"] = None  # `import torch` raises ImportError, which tensorboardX expects
    try:
        from tensorboardX import SummaryWriter
    finally:
        if block:
            del sys.modules["torch"]
    return SummaryWriter
