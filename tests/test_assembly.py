"""run.json: what evaluation rebuilds a model from, including the manipulation set it trained on;
the abstract build that restores and lowerings start from."""

import dataclasses
import json

import jax
import jax.numpy as jnp
import pytest

from camjax import assembly
from camjax.cameras import MANIPULATION_NAMES


def _run(**overrides):
    fields = dict(
        model={"name": "camnet"},
        dtype="float32",
        classes=["a", "b"],
        patch=64,
        trained_views="d4",
        d4_exempt_classes=[],
        data_root="/data",
    )
    fields.update(overrides)
    return assembly.Run(**fields)


def test_the_manipulation_set_is_recorded_and_read_back(tmp_path):
    _run().save(str(tmp_path))
    assert json.load(open(tmp_path / "run.json"))["manipulations"] == list(MANIPULATION_NAMES)
    assert assembly.Run.load(str(tmp_path)) == _run()


def test_a_run_json_from_before_the_field_reads_as_the_challenge_set(tmp_path):
    fields = dataclasses.asdict(_run())
    del fields["manipulations"]
    (tmp_path / "run.json").write_text(json.dumps(fields))
    assert assembly.Run.load(str(tmp_path)).manipulations == list(MANIPULATION_NAMES)


def test_a_run_trained_on_another_manipulation_set_is_refused_by_name(tmp_path):
    _run(manipulations=["none", "jpeg70", "blur1.0"]).save(str(tmp_path))
    with pytest.raises(ValueError, match="blur1.0.*the camjax version that trained it"):
        assembly.Run.load(str(tmp_path))


def test_the_abstract_build_does_not_walk_the_trace_at_every_rng_draw(monkeypatch):
    """The state comes out as shapes without the tracer-origin walk that made it quadratic in the
    layers; tracer errors outside the build still name the origin."""
    from jax._src.interpreters import partial_eval

    from camjax.defaults import get_config
    from camjax.models import default_config
    from camjax.parallel import DataParallel

    walks = []
    frame = partial_eval.JaxprStackFrame
    find_progenitors = frame.find_progenitors
    monkeypatch.setattr(frame, "find_progenitors", lambda *a: walks.append(1) or find_progenitors(*a))
    config = get_config()
    config.model = default_config("mobilenet")
    built = assembly.build_abstract(
        config.model, 10, DataParallel("sharded"), dtype="float32", optim_config=config.optim
    )
    leaves = jax.tree.leaves(built.host_state)
    assert len(leaves) > 100 and all(isinstance(x, jax.ShapeDtypeStruct) for x in leaves)
    assert not walks

    def branch(x):
        return x if x.sum() > 0 else -x

    with pytest.raises(jax.errors.TracerBoolConversionError, match="depends on the value of the argument x"):
        jax.jit(branch)(jnp.zeros(3))
    assert walks
