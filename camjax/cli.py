"""What the entry points share: the prediction flags of `evaluate` and `pseudolabel`, and how
every command reports an error.

The convention: flags spelled with underscores (`--data_root`, `--max_tiles`); an expected
failure (bad input, a path that is missing or already there, an invalid config) prints one
line `error: ...` on stderr and exits with status 1, a usage error exits with status 2, and
only a bug shows a traceback. The prediction flags are defined once, so the two commands
accept the same spelling, help and defaults; where one is left unset, the first run's
`config.eval` decides (blend, tiles per image, batch).
"""

from __future__ import annotations

from absl import app, flags

from camjax import tta
from camjax.data.grid import TEST_GRIDS
from camjax.postprocess import AGGREGATIONS

EXPECTED_ERRORS = (FileNotFoundError, FileExistsError, NotADirectoryError, PermissionError, ValueError)


def run_or_exit(fn, *args, **kwargs):
    """`fn(*args, **kwargs)`, with an expected error turned into `error: ...` and exit status 1."""
    try:
        return fn(*args, **kwargs)
    except EXPECTED_ERRORS as e:
        raise SystemExit(f"error: {e}") from None


def define_model_flags() -> None:
    """The runs to predict with and how their views, tiles and models blend (evaluate,
    pseudolabel, predict)."""
    flags.DEFINE_multi_string("workdir", None, "Training run directory; repeat to ensemble.")
    flags.DEFINE_enum("tta", None, list(tta.VIEW_SETS), "D4 views (default: those each model trained with).")
    flags.DEFINE_enum(
        "agg", None, list(AGGREGATIONS), "How views, tiles and models blend (default: the first run's config.eval.agg)."
    )
    flags.DEFINE_float("power", 2.0, "p of the power mean (2: mean of squares).")
    flags.DEFINE_multi_float("weights", None, "One weight per --workdir for the model blend.")
    flags.DEFINE_integer("batch_size", None, "Tiles per batch (default: config.eval.batch_size).")
    flags.DEFINE_integer(
        "max_tiles",
        None,
        "At most this many tiles per test image, evenly spaced; 0: every tile (default: config.eval.max_tiles).",
    )


def define_prediction_flags(*, data_root_help: str) -> None:
    """`define_model_flags` and the test-set ones of evaluate and pseudolabel."""
    define_model_flags()
    flags.DEFINE_string("data_root", None, data_root_help)
    flags.DEFINE_bool("pad", False, "Mirror-pad test images smaller than the patch instead of failing.")
    flags.DEFINE_bool("skip_bad", False, "Predict the most frequent class for unreadable test files.")
    flags.DEFINE_bool("prnu", False, "Cluster the test files by sensor noise (PRNU) and make each cluster agree.")
    flags.DEFINE_float("prnu_threshold", 4.5, "Mean pairwise z score at which PRNU clusters merge.")
    flags.DEFINE_enum(
        "grid",
        None,
        list(TEST_GRIDS),
        "Tile test images from the corner, or on the JPEG block grid their pixels show (default: config.eval.grid).",
    )


def model_options() -> dict:
    """The keywords of `define_model_flags`, as `camjax.evaluator` takes them."""
    f = flags.FLAGS
    if f.weights and len(f.weights) != len(f.workdir):
        raise app.UsageError("--weights needs one value per --workdir")
    return dict(tta_name=f.tta, agg=f.agg, p=f.power, weights=f.weights, batch_size=f.batch_size, max_tiles=f.max_tiles)


def prediction_options() -> dict:
    """`camjax.evaluator.evaluate`'s keywords from the flags of `define_prediction_flags`."""
    f = flags.FLAGS
    return dict(
        **model_options(),
        data_root=f.data_root,
        pad=f.pad,
        skip_bad=f.skip_bad,
        prnu_threshold=f.prnu_threshold if f.prnu else None,
        grid=f.grid,
    )
