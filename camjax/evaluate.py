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
_SHARED = flags.DEFINE_bool(
    "shared", False, "Also predict the test set as photos shared online (long side <= 2048, JPEG 75-85) and compare."
)


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    assembly.quiet_libraries()
    assembly.enable_compilation_cache(".cache/jax")
    options = cli.prediction_options()
    try:
        result = evaluator.evaluate(
            flags.FLAGS.workdir, balance=_BALANCE.value, out=_OUT.value, shared=_SHARED.value, **options
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
            print(
                f"prnu: {r['clusters']} clusters, {r['clustered']}/{r['files']} files, purity={r['purity']:.4f}; "
                f"without: unbalanced={r['unbalanced_weighted_accuracy_without']:.4f} "
                f"balanced={r['balanced_weighted_accuracy_without']:.4f}"
            )
        c = result["calibration"]
        print(
            f"calibration ({'fitted' if all(c['runs_calibrated']) else 'none for some runs'}): "
            f"ECE {c['before']['ece']:.4f} -> {c['after']['ece']:.4f} (a calibrated model would show "
            f"{c['ece_if_calibrated']['median']:.4f} on these {sum(c['reliability_after']['count'])} images), "
            f"NLL {c['before']['nll']:.4f} -> {c['after']['nll']:.4f}"
        )
        if "open_set" in result:
            o = result["open_set"]
            line = f"open set ({o['known']} known, {o['unknown']} unknown): " + ", ".join(
                f"AUROC[{k}]={v:.4f}" for k, v in o["auroc"].items()
            )
            if o["score"] in o.get("false_rejection", {}):  # the verdict's score was calibrated
                line += (
                    f"; at the {o['score']} threshold: false rejection {o['false_rejection'][o['score']]:.4f},"
                    f" false acceptance {o['false_acceptance'][o['score']]:.4f}"
                )
            for group, g in o.get("by_group", {}).items():
                counts = f"{g['known']} known, {g['unknown']} unknown"
                line += f"; {group} ({counts}): AUROC[{o['score']}]={g['auroc'][o['score']]:.4f}"
            print(line)
        if "shared_online" in result:
            s = result["shared_online"]
            print(
                f"shared online (JPEG {s['qualities'][0]}-{s['qualities'][1]}, long side <= {s['long_side']}): "
                f"weighted_accuracy {s['before']['weighted_accuracy']:.4f} -> {s['after']['weighted_accuracy']:.4f}, "
                f"ECE {s['before']['ece']:.4f} -> {s['after']['ece']:.4f}"
            )
        print(
            f"unbalanced={result['unbalanced_weighted_accuracy']:.4f} balanced={result['balanced_weighted_accuracy']:.4f}"
        )
        print(f"weighted_accuracy={result['weighted_accuracy']:.4f}")
    return 0


if __name__ == "__main__":
    flags.mark_flags_as_required(["workdir"])
    app.run(main)
