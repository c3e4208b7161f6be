"""`python -m camjax.evaluate --workdir DIR [--workdir DIR2 ...] [--tta d4] [--agg geometric] [--balance] [--prnu] [--out F]`.

Restores the best checkpoint of each run, predicts every test file under the D4 views,
blends views, tiles and models, optionally balances, writes the submission; with
ROOT/test_labels.csv present, prints `weighted_accuracy=<float>` as its last line.
"""

import sys

from absl import app, flags

from camjax import evaluator, trainer, tta
from camjax.data.decode import BadImageError

_WORKDIRS = flags.DEFINE_multi_string("workdir", None, "Training run directory; repeat to ensemble.")
_DATA_ROOT = flags.DEFINE_string("data_root", None, "Dataset root with test/ (default: the first run's root).")
_TTA = flags.DEFINE_enum("tta", None, list(tta.VIEW_SETS), "D4 views (default: those each model trained with).")
_AGG = flags.DEFINE_enum("agg", "geometric", ["mean", "geometric", "power"], "How views, tiles and models blend.")
_POWER = flags.DEFINE_float("power", 2.0, "p of the power mean (2: mean of squares).")
_WEIGHTS = flags.DEFINE_multi_float("weights", None, "One weight per --workdir for the model blend.")
_BALANCE = flags.DEFINE_bool("balance", False, "Write the class-balanced assignment as the submission.")
_OUT = flags.DEFINE_string("out", "submission.csv", "Submission CSV path.")
_BATCH = flags.DEFINE_integer("batch_size", 64, "Tiles per batch.")
_MAX_TILES = flags.DEFINE_integer("max_tiles", None, "At most this many tiles per test image (evenly spaced).")
_PAD = flags.DEFINE_bool("pad", False, "Mirror-pad test images smaller than the patch instead of failing.")
_SKIP_BAD = flags.DEFINE_bool("skip_bad", False, "Predict the most frequent class for unreadable test files.")
_PRNU = flags.DEFINE_bool("prnu", False, "Cluster the test files by sensor noise (PRNU) and make each cluster agree.")
_PRNU_THRESHOLD = flags.DEFINE_float("prnu_threshold", 4.5, "Mean pairwise z score at which PRNU clusters merge.")


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    trainer.quiet_libraries()
    trainer.enable_compilation_cache(".cache/jax")
    if _WEIGHTS.value and len(_WEIGHTS.value) != len(_WORKDIRS.value):
        raise app.UsageError("--weights needs one value per --workdir")
    try:
        result = evaluator.evaluate(
            _WORKDIRS.value, data_root=_DATA_ROOT.value, tta_name=_TTA.value, agg=_AGG.value, p=_POWER.value,
            weights=_WEIGHTS.value, balance=_BALANCE.value, out=_OUT.value, batch_size=_BATCH.value,
            max_tiles=_MAX_TILES.value, pad=_PAD.value, skip_bad=_SKIP_BAD.value,
            prnu_threshold=_PRNU_THRESHOLD.value if _PRNU.value else None,
        )
    except (BadImageError, FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(f"wrote {result['out']}")
    if "weighted_accuracy" in result:
        for name, score in result["tta_subsets"].items():
            print(f"tta {name}: weighted_accuracy={score:.4f}")
        if "prnu" in result:
            r = result["prnu"]
            print(f"prnu: {r['clusters']} clusters, {r['clustered']}/{r['files']} files, purity={r['purity']:.4f}; "
                  f"without: unbalanced={r['unbalanced_weighted_accuracy_without']:.4f} "
                  f"balanced={r['balanced_weighted_accuracy_without']:.4f}")
        print(f"unbalanced={result['unbalanced_weighted_accuracy']:.4f} balanced={result['balanced_weighted_accuracy']:.4f}")
        print(f"weighted_accuracy={result['weighted_accuracy']:.4f}")
    return 0


if __name__ == "__main__":
    flags.mark_flags_as_required(["workdir"])
    app.run(main)
