"""run.json: what evaluation rebuilds a model from, including the manipulation set it trained on."""

import dataclasses
import json

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
