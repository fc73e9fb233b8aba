"""train_state.json as a typed, versioned record: a round trip, a file from before the version field,
and every malformed field named with its file."""

import json

import pytest

from titans_pretrain.train_state import TRAIN_STATE, TrainState, TrainStateError

GOOD = {"step": 8, "data": [{"epoch": 0, "position": 32}], "config": {"model": {"variant": "mag"}},
        "layout": {"tensor": 2, "data": 1, "rank": 0}}


def test_round_trip_and_a_file_without_version(tmp_path):
    TrainState(**GOOD).write(str(tmp_path))
    assert json.loads((tmp_path / TRAIN_STATE).read_text())["version"] == 1
    state = TrainState.read(str(tmp_path))
    assert state == TrainState(**GOOD) and state.folder == str(tmp_path)
    (tmp_path / TRAIN_STATE).write_text(json.dumps(GOOD))  # written before the version field existed
    assert TrainState.read(str(tmp_path)).step == 8


@pytest.mark.parametrize("change,message", [
    ({"step": "8"}, "field 'step' must be int"),
    ({"step": True}, "field 'step' must be int"),
    ({"data": {}}, "field 'data' must be list"),
    ({"config": {}}, "field 'config.model' must be an object"),
    ({"layout": {"tensor": 2}}, "field 'layout.data' must be int"),
    ({"version": 2}, "format version 2; this code reads version 1"),
])
def test_malformed_fields_are_named(tmp_path, change, message):
    (tmp_path / TRAIN_STATE).write_text(json.dumps({**GOOD, **change}))
    with pytest.raises(TrainStateError, match=f"{TRAIN_STATE}: {message}"):
        TrainState.read(str(tmp_path))


def test_unreadable_file(tmp_path):
    (tmp_path / TRAIN_STATE).write_text("{not json")
    with pytest.raises(TrainStateError, match="is unreadable"):
        TrainState.read(str(tmp_path))
    with pytest.raises(TrainStateError, match="is unreadable"):
        TrainState.read(str(tmp_path / "missing"))
