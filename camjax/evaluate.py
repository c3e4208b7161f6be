"""`python -m camjax.evaluate --workdir DIR [--workdir DIR2 ...] [--tta d4] [--agg geometric] [--balance] [--prnu] [--out F]`.

Restores the best checkpoint of each run, predicts every test file under the D4 views,
blends views, tiles and models, optionally balances, writes the submission; with
ROOT/test_labels.csv present, prints `weighted_accuracy=<float>` as its last line.
"""

import sys

from absl import app, flags

from camjax import assembly, cli, evaluator
from camjax.data.decode import BadImageError

cli.define_prediction_flags(data_root_help="Dataset root with test/ (default: the first run's root).")
_BALANCE = flags.DEFINE_bool("balance", False, "Write the class-balanced assignment as the submission.")
_OUT = flags.DEFINE_string("out", "submission.csv", "Submission CSV path.")


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    assembly.quiet_libraries()
    assembly.enable_compilation_cache(".cache/jax")
    options = cli.prediction_options()
    try:
        result = evaluator.evaluate(flags.FLAGS.workdir, balance=_BALANCE.value, out=_OUT.value, **options)
    except (BadImageError, FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(f"wrote {result['out']}")
    if "weighted_accuracy" in result:
        for name, score in result["tta_subsets"].items():
            print(f"tta {name}: weighted_accuracy={score:.4f}")
        if "prnu" in result:
            r = result["prnu"]
            print(
                f"prnu: {r['clusters']} clusters, {r['clustered']}/{r['files']} files, purity={r['purity']:.4f}; "
                f"without: unbalanced={r['unbalanced_weighted_accuracy_without']:.4f} "
                f"balanced={r['balanced_weighted_accuracy_without']:.4f}"
            )
        print(
            f"unbalanced={result['unbalanced_weighted_accuracy']:.4f} balanced={result['balanced_weighted_accuracy']:.4f}"
        )
        print(f"weighted_accuracy={result['weighted_accuracy']:.4f}")
    return 0


if __name__ == "__main__":
    flags.mark_flags_as_required(["workdir"])
    app.run(main)
