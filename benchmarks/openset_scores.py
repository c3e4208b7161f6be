"""Which feature-space score tells held-out cameras best, judged on the same trained models.

    python benchmarks/recipe.py --seeds 0,1,2 --hold_out 3 --keep --runs RUNS   # train once
    python benchmarks/openset_scores.py RUNS/*-seed* [--layers] [--ensemble]

A post-hoc open-set score is a choice made after training, and seeds move a three-minute run
by more than such a choice: so every candidate is scored on the same embeddings. For each kept
run (trained without some of its dataset's cameras) the script embeds the validation frames cut
like test images (`calibration.test_like_samples`, as `calibrate_run` does) and the test set
(as `evaluate` predicts it: the configured views, tiles and grid), then scores every test image
with each candidate. Each candidate is treated as `camjax.calibration` treats the shipped
`feature_distance`: fitted per manipulation group, its validation scores cross-fitted by frame
(`calibration.cross_fitted_scores`), standardised per group (median 0, the `false_rejection`
quantile -1), and the test images judged at -1. One JSON line per run: each candidate's AUROC
(known against unknown cameras) with its false rejections and false acceptances, and, for the
shipped score, each camera's median standardised score, share accepted and the known camera
the model names most often for it (an unknown camera that the model takes for a sibling of
the same maker is where a feature-space score fails), and its verdicts on the unaltered and
the manipulated test images apart and on each manipulation the test labels name (a resize
or a second JPEG rewrites the traces; the first group is the photo an examiner receives).
With `--ensemble`, the runs trained on the same cameras (seeds of one `recipe.py
--split_seed`) are also scored as one ensemble: the mean of their standardised shipped
scores, as `evaluate` would blend their probabilities. With `--layers` (camnet runs), the
statistics of every earlier block are scored too (`layer_statistics`, `layer_candidates`): the
last layer keeps only what tells the known cameras apart, an earlier one may still hold what
tells a sibling camera from them.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import os
import sys

import common
import numpy as np


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


def _groups(manipulations: np.ndarray) -> np.ndarray:
    return (np.asarray(manipulations) != 0).astype(np.int64)


def candidates(layers: tuple[int, ...] = ()):
    """name -> fn(features, labels, manipulation ids, query features, query groups) -> raw
    scores, higher: more like a known camera. With `layers` (the widths of the blocks appended
    to the embedding by `layer_statistics`), also one score per block and their sum."""
    from camjax.calibration import FeatureDensity, density_scores

    components = density_scores  # the shipped `feature_distance`

    def unit_components(f, y, m, q, qg):  # the same on L2-normalised embeddings
        return FeatureDensity.fit(_unit(f), y, m).raw(_unit(q), qg)

    def relative(f, y, m, q, qg):  # minus the distance to one Gaussian of all samples (Ren et al. 2021)
        return components(f, y, m, q, qg) - FeatureDensity.fit(f, 0 * y, _groups(m)).raw(q, qg)

    def per_camera(f, y, m, q, qg):  # one mean per camera and group
        return FeatureDensity.fit(f, y, _groups(m)).raw(q, qg)

    def nearest(k):  # minus the squared distance to the k-th nearest validation sample (Sun et al. 2022)
        def score(f, y, m, q, qg):
            f, q, g = _unit(f), _unit(q), _groups(m)
            out = np.full(len(q), np.nan)
            for group in np.unique(qg):
                ref = f[g == group] if (g == group).any() else f
                d = ((q[qg == group][:, None, :] - ref[None]) ** 2).sum(-1)
                out[qg == group] = -np.sort(d, 1)[:, min(k, ref.shape[0]) - 1]
            return out

        return score

    scores = {
        "feature_distance": components,
        "unit_components": unit_components,
        "relative_components": relative,
        "per_camera": per_camera,
        "nearest_1": nearest(1),
        "nearest_2": nearest(2),
        "nearest_3": nearest(3),
    }
    if layers:
        extra = int(sum(layers))
        scores = {name: _embedding_only(fn, extra) for name, fn in scores.items()}
        scores.update(layer_candidates(layers, components))
    return scores


def _embedding_only(score, extra: int):
    def on_embedding(f, y, m, q, qg):
        return score(f[:, :-extra], y, m, q[:, :-extra], qg)

    return on_embedding


def layer_candidates(widths: tuple[int, ...], components):
    """Scores read from the blocks `layer_statistics` appends after the embedding: each block's
    components alone (`block_i`), and the sum over the embedding and every block of its score
    put on a common scale (median of the fit's own scores 0, its 5% quantile -1): the
    unweighted feature ensemble of Lee et al. (2018). The last layer is trained to tell the
    known cameras apart; earlier ones still describe what it has learnt to ignore."""
    from camjax.calibration import FeatureDensity

    def columns(f) -> list[slice]:  # the embedding's, then each block's
        edges = f.shape[1] - int(sum(widths)) + np.cumsum((0,) + widths)
        return [slice(0, edges[0])] + [slice(a, b) for a, b in zip(edges[:-1], edges[1:])]

    def block(i):
        def score(f, y, m, q, qg):
            sl = columns(f)[i + 1]
            return components(f[:, sl], y, m, q[:, sl], qg)

        return score

    def ensemble(f, y, m, q, qg):
        total = np.zeros(len(q))
        for sl in columns(f):
            density = FeatureDensity.fit(f[:, sl], y, m)
            own = density.raw(f[:, sl], _groups(m))
            total += standardised(own, _groups(m), density.raw(q[:, sl], qg), qg, 0.05)
        return total

    out = {f"block_{i}": block(i) for i in range(len(widths))}
    out["layer_ensemble"] = ensemble
    return out


@contextlib.contextmanager
def layer_statistics():
    """While open, the embedding every prediction returns is followed by per-block statistics of
    camnet's feature maps: the per-channel standard deviation of the high-pass residual after
    the space-to-depth stem, then each block's per-channel mean and standard deviation (over
    the tile, then averaged over tiles as the embedding is). The embedding is read from the
    same pass (`Classifier.features_from`). Yields the list the blocks' widths are put in."""
    import jax.numpy as jnp

    from camjax import steps
    from camjax.models.layers import space_to_depth

    original, widths = steps.predict_features_and_logits, []

    def with_layers(params, model_state, images, is_manipulated, *, model_def):
        from flax import nnx

        model = nnx.merge(model_def.eval, params, model_state, copy=True)
        x = steps.preprocess(images, model_def.preprocess)
        h = model.highpass(x.astype(jnp.float32)).astype(model.dtype)  # as Classifier.feature_map
        if model.space_to_depth > 1:
            h = space_to_depth(h, model.space_to_depth)
        backbone = model.backbone  # CamNet.__call__, with each block's statistics kept
        h = space_to_depth(h, backbone.stem) if backbone.stem > 1 else h
        blocks = [h.std(axis=(1, 2))]
        for layer in backbone.layers:
            h = layer(h)
            blocks += [h.mean(axis=(1, 2)), h.std(axis=(1, 2))]
        widths[:] = [b.shape[-1] for b in blocks]
        features = model.features_from(x, h.astype(jnp.float32))
        logits = model.head(features.astype(model.dtype), is_manipulated)["logits"]
        return jnp.concatenate([features, *[b.astype(jnp.float32) for b in blocks]], axis=-1), logits

    steps.predict_features_and_logits = with_layers
    try:
        yield widths
    finally:
        steps.predict_features_and_logits = original


def standardised(validation, validation_groups, test, test_groups, false_rejection: float) -> np.ndarray:
    """`test` scores on the verdict's scale, each group's set by its validation scores (all of
    them for a group validation lacks), as `FeatureDensity.standardise` sets the shipped one's."""
    from camjax.calibration import open_set_scale

    out = np.full(len(test), np.nan)
    for g in np.unique(test_groups):
        ref = validation[validation_groups == g] if (validation_groups == g).any() else validation
        centre, spread = open_set_scale(ref, false_rejection)
        out[test_groups == g] = (test[test_groups == g] - centre) / spread
    return out


def embed(workdir: str):
    """(validation: features, labels, manipulation ids, frames; test: features, probs, camera
    names, groups (from the file names, as `evaluate` reads them), manipulation names (from
    the labels); the run's classes)."""
    from camjax import calibration, evaluator, postprocess, tta
    from camjax.data import sources
    from camjax.parallel import DataParallel

    dp = DataParallel("sharded")
    restored = evaluator.restore(workdir, dp)
    configured = restored.config.get("eval", {})
    agg, max_tiles = configured.get("agg", "geometric"), configured.get("max_tiles", 0) or None
    views = tta.views(restored.run.trained_views)
    _, val_features, labels, frames, manipulations = calibration.test_like_predictions(restored, dp, workdir)
    root = restored.run.data_root
    test_paths = sources.list_test_files(root)
    grid = configured.get("grid", "corner")
    predicted = evaluator.predict_files(
        restored,
        dp,
        test_paths,
        views,
        agg=agg,
        p=2.0,
        batch_size=configured.get("batch_size", 64),
        max_tiles=max_tiles,
        pad=False,
        skip_bad=False,
        phase=evaluator.GridPhases(restored.run.patch) if grid == "found" else None,
        features=True,
    )
    fnames = [os.path.basename(p) for p in test_paths]
    truth = {f: (camera, m) for f, camera, m in postprocess.read_labels(os.path.join(root, "test_labels.csv"))}
    probs = postprocess.blend(predicted.probs, axis=1, agg=agg)
    return (
        (val_features.astype(np.float64), labels, manipulations, frames),
        (
            np.nan_to_num(predicted.features).astype(np.float64),
            probs,
            np.array([truth[f][0] for f in fnames]),
            evaluator.manipulation_groups(fnames),
            np.array([truth[f][1] for f in fnames]),
        ),
        list(restored.run.classes),
    )


def verdicts(test: np.ndarray, known: np.ndarray) -> dict:
    """AUROC of standardised scores (known against unknown cameras) and the verdict's error
    rates at their threshold, -1."""
    from camjax import calibration

    return {
        "auroc": common.rounded(calibration.auroc(test[known], test[~known]), 4),
        "false_rejection": common.rounded(float(np.mean(test[known] < -1)), 4),
        "false_acceptance": common.rounded(float(np.mean(test[~known] >= -1)), 4),
    }


def by_manipulation(test: np.ndarray, known: np.ndarray, manipulations: np.ndarray) -> dict:
    """`verdicts` of the unaltered and the manipulated test images apart (`by_group`) and of
    each manipulation (`by_manipulation`; a handful of images each in one run: read them pooled
    over runs)."""
    unaltered = manipulations == "none"
    parts = {"by_group": {"unaltered": unaltered, "manipulated": ~unaltered}}
    parts["by_manipulation"] = {m: manipulations == m for m in sorted(set(manipulations.tolist()))}
    return {
        part: {
            name: {"known": int(known[rows].sum()), "unknown": int((~known[rows]).sum())}
            | verdicts(test[rows], known[rows])
            for name, rows in rows_of.items()
            if len(set(known[rows])) == 2
        }
        for part, rows_of in parts.items()
    }


def score_run(workdir: str, false_rejection: float, layers: bool = False):
    """(the run's record fields, its standardised `feature_distance` test scores, the test
    images' cameras and manipulations)."""
    from camjax import calibration

    with layer_statistics() if layers else contextlib.nullcontext([]) as widths:
        (vf, vl, vm, frames), (tf, probs, cameras, tg, manipulations), classes = embed(workdir)
    known = np.isin(cameras, classes)
    if known.all() or not known.any():
        raise SystemExit(f"{workdir}: its test set needs both trained and held-out cameras")
    out = {"known": int(known.sum()), "unknown": int((~known).sum()), "auroc": {}, "false_rejection": {}}
    out["false_acceptance"] = {}
    shipped = None
    for name, fn in candidates(tuple(widths)).items():
        oof = calibration.cross_fitted_scores(vf, vl, frames, vm, score=fn)
        test = standardised(oof, _groups(vm), fn(vf, vl, vm, tf, tg), tg, false_rejection)
        for field, value in verdicts(test, known).items():
            out[field][name] = value
        if name == "feature_distance":
            shipped = test
    out.update(by_manipulation(shipped, known, manipulations))
    named = np.array(classes)[probs.argmax(-1)]
    out["per_camera"] = {
        camera: {
            "known": bool(camera in classes),
            "median_score": common.rounded(float(np.median(shipped[cameras == camera])), 3),
            "accepted": common.rounded(float(np.mean(shipped[cameras == camera] >= -1)), 3),
            "named_as": collections.Counter(named[cameras == camera].tolist()).most_common(1)[0][0],
        }
        for camera in sorted(set(cameras.tolist()))
    }
    return out, shipped, cameras, manipulations


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument(
        "workdirs", nargs="+", help="kept training runs with held-out cameras (recipe.py --keep --hold_out K)"
    )
    p.add_argument("--name", default="", help="a label for the records")
    p.add_argument("--false_rejection", type=float, default=0.05, help="the threshold's share of known cameras")
    p.add_argument(
        "--layers", action="store_true", help="camnet runs: also score each block's feature statistics (Lee et al.)"
    )
    p.add_argument(
        "--ensemble",
        action="store_true",
        help="also score the runs trained on the same cameras as one ensemble (the mean of their standardised scores)",
    )
    args = p.parse_args(argv)
    from camjax import assembly

    assembly.quiet_libraries()
    splits = collections.defaultdict(list)  # (test cameras, trained cameras) -> [(workdir, scores)]
    for workdir in args.workdirs:
        with contextlib.redirect_stdout(sys.stderr):  # stdout carries the JSON lines only
            result, shipped, cameras, manipulations = score_run(workdir, args.false_rejection, args.layers)
        common.emit(common.kept_run_record("openset_scores", workdir, args.name, **result))
        trained = tuple(c for c, v in result["per_camera"].items() if v["known"])
        split = (tuple(cameras.tolist()), tuple(manipulations.tolist()), trained)
        splits[split].append((workdir, shipped, result["auroc"]["feature_distance"]))
    if args.ensemble:
        for (cameras, manipulations, trained), members in splits.items():
            if len(members) > 1:
                common.emit(ensemble_record(members, np.array(cameras), np.array(manipulations), trained, args.name))


def ensemble_record(members, cameras: np.ndarray, manipulations: np.ndarray, trained, name: str) -> dict:
    """The runs trained on the same cameras, scored as one ensemble: the mean of the members'
    standardised `feature_distance`, judged at -1 as each member's is."""
    known = np.isin(cameras, trained)
    mean = np.mean([scores for _, scores, _ in members], axis=0)
    return common.record(
        "openset_scores_ensemble",
        model=common.runs_model(w for w, _, _ in members),
        name=name,
        workdirs=[w for w, _, _ in members],
        trained=list(trained),
        member_auroc=[a for _, _, a in members],
        **verdicts(mean, known),
        **by_manipulation(mean, known, manipulations),
        peak_rss_mb=common.peak_rss_mb(),
        compiles_after_warmup=None,
    )


if __name__ == "__main__":
    main()
