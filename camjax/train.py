"""`python -m camjax.train --config configs/<model>.py[:preset] --workdir DIR`: trains and validates.

Started again on the same DIR, the run resumes from its latest checkpoint. Any config field
can be overridden: --config.batch_size=64 --config.data.root=/data/camera.
"""

from absl import app, flags
from ml_collections import config_flags

from camjax import trainer

_CONFIG = config_flags.DEFINE_config_file("config", None, "Training configuration (file[:preset]).", lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for checkpoints, metrics and TensorBoard events.")


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    trainer.quiet_libraries()
    final = trainer.train_and_evaluate(_CONFIG.value, _WORKDIR.value)
    if final:
        print(f"val/weighted_accuracy={final['val/weighted_accuracy']:.4f}")


if __name__ == "__main__":
    flags.mark_flags_as_required(["config", "workdir"])
    app.run(main)
