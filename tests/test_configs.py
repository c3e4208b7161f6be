"""Every model config and preset builds its classifier and accepts its own patch size (abstractly)."""

import importlib
from pathlib import Path

import jax
import jax.numpy as jnp
import pytest
from flax import nnx

from camjax import models

CONFIGS = sorted(
    p.stem
    for p in (Path(__file__).resolve().parents[1] / "configs").glob("*.py")
    if p.stem not in ("__init__", "common")
)


@pytest.mark.parametrize("preset", ["", "quick"])
@pytest.mark.parametrize("name", CONFIGS)
def test_config_builds_and_runs_at_its_patch_size(name, preset):
    config = importlib.import_module(f"configs.{name}").get_config(preset)
    assert config.batch_size % config.grad_accum == 0
    model = nnx.eval_shape(lambda: models.create(config.model, 10, dtype=config.dtype))
    model.eval()  # abstract tracing of inference is fast; training differs only in BatchNorm
    graphdef, state = nnx.split(model)
    p = config.data.patch

    def forward(state, images, flags):
        m = nnx.merge(graphdef, state)
        return m(models.preprocess(images, models.get(config.model.name).preprocess), flags)

    out = jax.eval_shape(
        forward, state, jax.ShapeDtypeStruct((2, p, p, 3), jnp.uint8), jax.ShapeDtypeStruct((2,), jnp.float32)
    )
    assert out["logits"].shape == (2, 10) and out["logits"].dtype == jnp.float32
    assert ("manip_logits" in out) == config.model.head.aux_head


def test_unknown_preset_is_an_error():
    with pytest.raises(ValueError, match="unknown preset"):
        importlib.import_module("configs.camnet").get_config("fast")


def test_every_mission_backbone_has_a_config():
    assert {
        "camnet",
        "resnet50",
        "mobilenet",
        "mobilenet_v2",
        "densenet121",
        "densenet201",
        "inception_resnet_v2",
    } <= set(CONFIGS)
    for name in CONFIGS:  # the config file's name is its model's name, except densenet201's quick DenseNet121
        assert importlib.import_module(f"configs.{name}").get_config().model.name == name
