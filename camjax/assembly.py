"""The one place that builds a run: dataset, model, optimizer, state and the wrapped steps.

Training (`camjax.trainer`), evaluation (`camjax.evaluator.restore`), the benchmarks and the
layout tests all call `build`, so what a benchmark times and what a test compares is exactly
what `python -m camjax.train` runs. `Run` is the part of a training config that evaluation
needs to rebuild the model; `enable_compilation_cache` and `quiet_libraries` are the process
set-up every entry point shares.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import json
import logging
import os

import jax
import ml_collections
import optax

from camjax import models, optim, steps, tta
from camjax.cameras import MANIPULATION_NAMES
from camjax.data import sources
from camjax.data.decode import read_bytes
from camjax.parallel import DataParallel, bn_axis_name
from camjax.postprocess import atomic_write

RUN_FILE = "run.json"
# Every program is cached, however quick to compile: with a threshold, whether a restarted run
# hits the cache would depend on how loaded the machine was when it first compiled.
CACHE_MIN_COMPILE_SECONDS = 0.0

log = logging.getLogger("camjax")


def enable_compilation_cache(path: str) -> None:
    """JAX's persistent compilation cache: a restarted run, or a rerun benchmark, does not compile again."""
    if path:
        jax.config.update("jax_compilation_cache_dir", os.path.abspath(path))
        jax.config.update("jax_persistent_cache_min_compile_time_secs", CACHE_MIN_COMPILE_SECONDS)


def quiet_libraries() -> None:
    """camjax's own messages at INFO; orbax's and absl's per-save chatter only when it matters."""
    from absl import logging as absl_logging

    absl_logging.set_verbosity(absl_logging.WARNING)
    log.setLevel(logging.INFO)


def resolve_data_root(data_config) -> str:
    """`data.root`, or the synthetic dataset generated once into `data.cache_dir`."""
    if data_config.root:
        return data_config.root
    from camjax import synth

    return str(synth.ensure_dataset(data_config.cache_dir, **data_config.synth.to_dict()))


DATA_SOURCES = ("folder", "tfds")


def data_source_problems(data_config) -> list[str]:
    """What keeps `data.source` and its fields from being read (`config_checks` lists them too)."""
    problems = []
    if data_config.source == "tfds" and not data_config.tfds_dir:
        problems.append("data.source='tfds' needs data.tfds_dir (built by python -m camjax.data.tfds_builder)")
    if data_config.source == "tfds" and data_config.get("extra"):
        problems.append("data.extra (an extra folder of training files) needs data.source='folder'")
    if data_config.source == "tfds" and data_config.get("outliers"):
        problems.append("data.outliers (a folder of other cameras' photos) needs data.source='folder'")
    return problems


def open_dataset(data_config, seed: int):
    """(index, read, location) for `data.source`: a challenge-layout folder or a TFDS build
    (`python -m camjax.data.tfds_builder`) holding the original file bytes."""
    problems = data_source_problems(data_config)
    if problems:
        raise ValueError(problems[0])
    if data_config.source == "tfds":
        from camjax.data import tfds_builder

        index = tfds_builder.load_index(data_config.tfds_dir, val_fraction=data_config.val_fraction, seed=seed)
        index, read, location = index, tfds_builder.BytesReader(data_config.tfds_dir), data_config.tfds_dir
    elif data_config.source == "folder":
        location, read = resolve_data_root(data_config), read_bytes
        index = sources.scan_root(location, val_fraction=data_config.val_fraction, seed=seed)
        if data_config.get("extra"):
            index = sources.add_extra_train(index, data_config.extra)
    else:
        raise ValueError(f"unknown data.source {data_config.source!r}; expected 'folder' or 'tfds'")
    if data_config.get("classes"):
        index = sources.keep_classes(index, data_config.classes)
    if data_config.get("outliers"):
        index = sources.add_outliers(index, data_config.outliers)
    return index, read, location


@dataclasses.dataclass
class Run:
    """What evaluation needs to rebuild a trained model: written to DIR/run.json."""

    model: dict
    dtype: str
    classes: list[str]
    patch: int
    trained_views: str  # the D4 subset seen in training: none | flips | rot90 | d4
    d4_exempt_classes: list[str]
    data_root: str  # the dataset folder, or the TFDS data_dir when data_source is 'tfds'
    data_source: str = "folder"
    # The auxiliary head's classes, in order. Runs written before this field existed trained
    # on the challenge's nine, which is what the default says.
    manipulations: list[str] = dataclasses.field(default_factory=lambda: list(MANIPULATION_NAMES))

    @classmethod
    def from_config(cls, config, classes, data_root: str) -> Run:
        return cls(
            model=json.loads(json.dumps(config.model.to_dict())),  # tuples -> lists, as stored
            dtype=config.dtype,
            classes=list(classes),
            patch=config.data.patch,
            trained_views=config.data.d4,
            d4_exempt_classes=list(config.data.d4_exempt_classes),
            data_root=os.path.abspath(data_root),
            data_source=config.data.source,
        )

    @classmethod
    def load(cls, workdir: str) -> Run:
        """The run of `workdir`; an error if its manipulation set is not this camjax's (the
        auxiliary head's shape, and what the manipulation ids mean, depend on it)."""
        path = os.path.join(workdir, RUN_FILE)
        if not os.path.exists(path):
            raise FileNotFoundError(f"{path} not found: {workdir} is not a camjax training directory")
        with open(path) as f:
            run = cls(**json.load(f))
        if run.manipulations != list(MANIPULATION_NAMES):
            raise ValueError(
                f"{path}: the run trained with manipulations {run.manipulations}, this camjax has "
                f"{list(MANIPULATION_NAMES)}; evaluate it with the camjax version that trained it"
            )
        return run

    def save(self, workdir: str) -> None:
        write_json(os.path.join(workdir, RUN_FILE), dataclasses.asdict(self))

    @property
    def model_config(self) -> ml_collections.ConfigDict:
        return ml_collections.ConfigDict(self.model)


def write_json(path: str, obj) -> None:
    with atomic_write(path) as f:
        json.dump(obj, f, indent=2, sort_keys=True)


@dataclasses.dataclass
class Assembled:
    """A model ready to train or predict: its static definition, the initial state on the
    host (restore targets are shaped after it), the optimizer, and the steps wrapped for `dp`."""

    dp: DataParallel
    model_def: steps.ModelDef
    tx: optax.GradientTransformation
    host_state: steps.TrainState

    def restore_target(self, sharding):
        """Abstract arrays shaped like the state, for a checkpoint restore onto `sharding`."""
        return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding), self.host_state)

    def train_step(self, config, class_weights=None):
        """(state, batch) -> (state, metrics), jitted or pmapped, the state's buffers donated."""
        return self.dp.train_step(
            functools.partial(
                steps.train_step, model_def=self.model_def, tx=self.tx, config=config, class_weights=class_weights
            )
        )

    def predict(self):
        """(state, batch) -> class probabilities [B, C], inference mode."""
        return self.dp.predict(functools.partial(steps.eval_step, model_def=self.model_def))

    def tta_predict(self, view_ids, *, features: bool = False):
        """(state, batch) -> class probabilities [B, V, C] under the D4 `view_ids`, one model
        call; with `features`, (probs, the identity view's embedding [B, D]) from that call."""
        return self.dp.predict(tta_step(self.model_def, tuple(view_ids), features=features))


def tta_step(model_def: steps.ModelDef, view_ids: tuple[int, ...], *, features: bool = False):
    """(state, batch) -> probs [B, V, C] (and the embedding [B, D] with `features`): all views
    through one model call."""

    def step(state, batch):
        def apply(images, is_manipulated):
            out = steps.predict_features_and_logits(
                *steps.inference_weights(state), images, is_manipulated, model_def=model_def
            )
            return out if features else out[1]

        out = tta.make_tta_predict(apply, view_ids, features=features)(batch["image"], batch["is_manipulated"])
        return (out[0].swapaxes(0, 1), out[1]) if features else out.swapaxes(0, 1)

    return step


def build(
    model_config,
    num_classes: int,
    dp: DataParallel,
    *,
    dtype: str,
    optim_config,
    steps_per_epoch: int = 1,
    total_steps: int = 1,
    seed: int = 0,
    init_from: str = "",
) -> Assembled:
    """The model of `model_config` for `num_classes`, its optimizer and initial state.

    BatchNorm averages its statistics over `dp`'s devices (pmap's axis, or the global batch
    under sharding). `init_from` imports ImageNet weights into the backbone (a
    `camjax.convert` output). Evaluation passes any `optim_config` of the run: only the
    optimizer state's structure matters to a restore.
    """
    model = models.create(model_config, num_classes, dtype=dtype, bn_axis_name=bn_axis_name(dp.mode), seed=seed)
    if init_from:
        from camjax.models import pretrained

        pretrained.restore_backbone(model.backbone, init_from)
    tx = optim.make_optimizer(optim_config, steps_per_epoch, total_steps)
    model_def, host_state = steps.init_state(
        model, tx, models.get(model_config.name).preprocess, seed, ema=optim_config.get("ema_decay", 0.0) > 0
    )
    return Assembled(dp, model_def, tx, host_state)


def build_abstract(model_config, num_classes: int, dp: DataParallel, **build_kwargs) -> Assembled:
    """`build` traced, not run: the same model definition and optimizer, and an initial state
    of `jax.ShapeDtypeStruct`s. Nothing is allocated or initialised, so a checkpoint restores
    into it at once (a resumed run, `evaluator.restore`), and a full-size model's steps lower in
    seconds on any machine (the CUDA lowering test, `benchmarks/trace_time.py`)."""
    made = {}

    def make():
        made["built"] = build(model_config, num_classes, dp, **build_kwargs)
        return made["built"].host_state

    with _tracer_probes_without_origin():
        state = jax.eval_shape(make)
    return dataclasses.replace(made["built"], host_state=state)


@contextlib.contextmanager
def _tracer_probes_without_origin():
    """flax's `Variable.set_value` probes `value.sharding` at every RNG draw. On a tracer, jax's
    `sharding` property builds an error message naming the value's origin, by walking every
    equation traced so far, and then drops it (`Tracer.__getattr__` answers the probe with a
    message of its own): tracing a model's construction is quadratic in its layers
    (jax-ml/jax#40041), 5 of DenseNet201's 6.6 s. Inside, tracer errors leave the origin out."""
    from jax._src.interpreters import partial_eval

    tracer = getattr(partial_eval, "DynamicJaxprTracer", None)
    if tracer is None or "_origin_msg" not in vars(tracer):  # a jax without the walk
        yield
        return
    walk = vars(tracer)["_origin_msg"]
    tracer._origin_msg = lambda self: ""
    try:
        yield
    finally:
        tracer._origin_msg = walk
