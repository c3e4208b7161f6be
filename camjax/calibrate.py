"""`python -m camjax.calibrate --workdir DIR [--false_rejection 0.05]`.

Fits (again) the temperature and open-set thresholds of a run's best checkpoint on its
validation frames and stores them in DIR/calibration.json (`camjax.calibration`). Training
does this itself at its end unless `config.eval.calibrate` is off; this is for runs trained
without it, on several processes, or before it existed.
"""

from absl import app, flags

from camjax import assembly, calibration, cli

_WORKDIR = flags.DEFINE_string("workdir", None, "Training run directory.", required=True)
_FALSE_REJECTION = flags.DEFINE_float(
    "false_rejection", calibration.FALSE_REJECTION, "Share of known-camera validation images the thresholds reject."
)


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    assembly.quiet_libraries()
    assembly.enable_compilation_cache(".cache/jax")
    c = cli.run_or_exit(calibration.calibrate_run, _WORKDIR.value, false_rejection=_FALSE_REJECTION.value)
    print(
        f"{c.samples} validation samples, step {c.step}: temperature {c.temperature:.4f}; "
        f"ECE {c.before['ece']:.4f} -> {c.after['ece']:.4f}, NLL {c.before['nll']:.4f} -> {c.after['nll']:.4f}"
    )
    print("open-set thresholds: " + ", ".join(f"{k}={v:.4f}" for k, v in c.thresholds.items()))


if __name__ == "__main__":
    app.run(main)
