"""A config is checked, every problem at once, before a run writes anything."""

import glob
import os

import numpy as np
import pytest
from camjax_testdata import REPO, make_challenge_tree, repo_config
from test_train_evaluate import tiny_config

from camjax import config_checks, trainer
from camjax.config_checks import ConfigError, validate

CONFIG_FILES = sorted(os.path.relpath(p, REPO) for p in glob.glob(str(REPO / "configs" / "*.py")))


@pytest.mark.parametrize("path", CONFIG_FILES)
@pytest.mark.parametrize("preset", ["", "quick"])
def test_every_shipped_config_is_valid(path, preset):
    validate(repo_config(f"{path}:{preset}"), num_devices=1, shapes=False)


@pytest.mark.parametrize("spec", ["configs/camnet.py:quick", "configs/mobilenet.py:quick", "configs/resnet50.py:quick"])
def test_quick_presets_trace_to_a_feature_map(spec):
    config = repo_config(spec)
    validate(config, num_devices=1)
    shape = config_checks.feature_map_shape(config.model, config.data.patch)
    assert shape[0] == 1 and min(shape[1:3]) >= 1


def test_every_problem_is_named_in_one_error():
    config = repo_config("configs/camnet.py:quick")
    config.data.d4 = "d8"
    config.data.class_balance = "oversample"
    config.data.manipulate_on = "gpu"
    config.optim.schedule = "cos"
    config.nonfinite = "ignore"
    config.parallel = "dp"
    config.model.highpass = "srm"
    config.model.highpass_clip = -1.0
    config.batch_size = 30
    config.grad_accum = 4
    config.data.patch = 60
    config.data.shared_prob = 1.5
    with pytest.raises(ConfigError) as e:
        validate(config, num_devices=1)
    message = str(e.value)
    expected = (
        "data.d4='d8'",
        "data.class_balance='oversample'",
        "data.manipulate_on='gpu'",
        "optim.schedule='cos'",
        "nonfinite='ignore'",
        "parallel='dp'",
        "model.highpass='srm'",
        "model.highpass_clip=-1.0",
        "batch_size=30 must divide into grad_accum (4) x devices (1)",
        "data.patch=60: expected a multiple of 8",
        "data.shared_prob=1.5: expected a value in [0, 1]",
    )
    for problem in expected:
        assert problem in message
    assert len(message.splitlines()) == 1 + len(expected)  # the header, then one line per problem


def test_the_shared_photo_augmentation_is_checked_against_the_device_path():
    config = repo_config("configs/camnet.py:quick")
    config.data.shared_prob = 0.3
    validate(config, num_devices=1, shapes=False)
    config.data.manipulate_on = "device"
    with pytest.raises(ConfigError, match="data.shared_prob=0.3: the shared-photo recompression runs on the host only"):
        validate(config, num_devices=1, shapes=False)


def test_the_final_decay_is_checked_against_the_schedule_and_the_run():
    config = repo_config("configs/camnet.py:quick")
    config.optim.schedule, config.optim.warmup_epochs = "constant", 1.0
    config.optim.decay_epochs = config.num_epochs - 1.0
    validate(config, num_devices=1, shapes=False)
    config.optim.decay_epochs = float(config.num_epochs)
    with pytest.raises(ConfigError, match=f"expected at most num_epochs={config.num_epochs}"):
        validate(config, num_devices=1, shapes=False)
    config.optim.schedule, config.optim.decay_epochs = "cosine", 2.0
    with pytest.raises(ConfigError, match="optim.decay_epochs=2.0: expected 0, or epochs > 0 with a constant"):
        validate(config, num_devices=1, shapes=False)


def test_clip_norm_and_weight_average_are_checked():
    config = repo_config("configs/camnet.py:quick")
    config.optim.clip_norm, config.optim.ema_decay = 1.0, 0.999
    validate(config, num_devices=1, shapes=False)
    config.optim.clip_norm, config.optim.ema_decay = -1.0, 1.0
    with pytest.raises(ConfigError) as e:
        validate(config, num_devices=1, shapes=False)
    assert "optim.clip_norm=-1.0: expected 0" in str(e.value) and "optim.ema_decay=1.0: expected 0" in str(e.value)


def test_devices_count_in_the_batch_check():
    config = repo_config("configs/camnet.py:quick")  # batch 32
    validate(config, num_devices=8, shapes=False)
    with pytest.raises(ConfigError, match="devices \\(3\\)"):
        validate(config, num_devices=3, shapes=False)


def test_unknown_model_is_named_with_the_registered_ones():
    config = repo_config("configs/camnet.py:quick")
    config.model.name = "resnet51"
    with pytest.raises(ConfigError, match="model.name='resnet51': expected one of .*resnet50"):
        validate(config, num_devices=1)


def test_a_patch_too_small_for_the_backbone_is_found_by_tracing():
    config = repo_config("configs/inception_resnet_v2.py:quick")
    config.data.patch = 64
    with pytest.raises(ConfigError, match="cannot take data.patch=64: .*needs >= 75 px"):
        validate(config, num_devices=1)


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    return make_challenge_tree(
        tmp_path_factory.mktemp("data"), classes=("Motorola-X", "iPhone-6", "Sony-NEX-7"), per_class=5
    )


def tiny(root, **overrides):
    return tiny_config(root, **{"num_epochs": 1, **overrides})


def test_an_invalid_config_writes_nothing(root, tmp_path):
    workdir = tmp_path / "run"
    with pytest.raises(ConfigError, match="data.class_balance='oversample'"):
        trainer.train_and_evaluate(tiny(root, **{"data.class_balance": "oversample"}), str(workdir))
    assert not workdir.exists()


def test_a_run_that_failed_before_its_first_checkpoint_does_not_refuse_the_corrected_retry(root, tmp_path):
    """run.json goes with the first checkpoint: a failed first attempt (here a loss that
    overflows at the first log, step 2, before the epoch-end save at step 3) leaves nothing that
    would make a retry with another patch size 'another run'."""
    workdir = tmp_path / "run"
    with pytest.raises(FloatingPointError):
        trainer.train_and_evaluate(tiny(root, **{"optim.learning_rate": 1e30}), str(workdir))
    assert not (workdir / "run.json").exists() and not (workdir / "config.json").exists()
    val = trainer.train_and_evaluate(tiny(root, **{"data.patch": 48}), str(workdir))
    assert np.isfinite(val["val/weighted_accuracy"])
    assert (workdir / "run.json").exists()
