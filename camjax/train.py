"""`python -m camjax.train --config configs/<model>.py[:preset] --workdir DIR`: trains and validates.

Started again on the same DIR, the run resumes from its latest checkpoint. Any config field
can be overridden: --config.batch_size=64 --config.data.root=/data/camera.

On several hosts every process runs this same command: under SLURM (`srun`) or a Kubernetes
indexed Job/JobSet the processes find each other from the environment, elsewhere pass
--coordinator_address/--num_processes/--process_id (see launch/README.md). DIR must be on
storage all processes share; only process 0 writes logs, metrics and TensorBoard events.
"""

import logging
import re

import jax
from absl import app, flags
from ml_collections import config_flags

from camjax import assembly, parallel, trainer
from camjax.checkpoint import CheckpointWriteError
from camjax.config_checks import ConfigError
from camjax.runlock import WorkdirBusyError

_CONFIG = config_flags.DEFINE_config_file("config", None, "Training configuration (file[:preset]).", lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for checkpoints, metrics and TensorBoard events.")
_COORDINATOR = flags.DEFINE_string(
    "coordinator_address",
    None,
    "host:port of process 0's coordinator, for a multi-process run outside SLURM/Kubernetes.",
)
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", None, "Processes in a multi-process run.")
_PROCESS_ID = flags.DEFINE_integer("process_id", None, "This process's index in [0, num_processes).")


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    assembly.quiet_libraries()
    parallel.initialize(_COORDINATOR.value, _NUM_PROCESSES.value, _PROCESS_ID.value)
    is_main = jax.process_index() == 0
    if not is_main:  # process 0 speaks for the run
        logging.getLogger("camjax").setLevel(logging.WARNING)
    try:
        final = trainer.train_and_evaluate(_CONFIG.value, _WORKDIR.value)
    except (ConfigError, WorkdirBusyError, CheckpointWriteError) as e:  # a typo, a requeue, a full disk: no traceback
        raise SystemExit(f"error: {e}") from None
    if final and final.get("val/weighted_accuracy") is not None and is_main:
        print(f"val/weighted_accuracy={final['val/weighted_accuracy']:.4f}")


def parse_flags(argv: list[str]) -> list[str]:
    """absl's parser, with an unknown --config.<field> reported in one line (with ml_collections'
    closest valid name) instead of a traceback from inside the library."""
    try:
        return flags.FLAGS(argv)
    except (AttributeError, KeyError) as e:
        raw = str(e.args[0] if e.args else e)
        field = re.findall(r"\w+", raw)[0]
        suggestion = re.search(r'Did you mean "(\w+)"', raw)
        hint = f" (did you mean {suggestion.group(1)!r}?)" if suggestion else ""
        overrides = " ".join(a for a in argv[1:] if a.startswith("--config."))
        raise SystemExit(f"error: no config field {field!r}{hint} in {overrides}") from None


if __name__ == "__main__":
    flags.mark_flags_as_required(["config", "workdir"])
    app.run(main, flags_parser=parse_flags)
