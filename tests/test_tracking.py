"""Experiment trackers: every metrics row reaches TensorBoard; a missing tracker stops first."""
from __future__ import annotations

import pytest

from rlreason import tracking
from rlreason.logger import read_metrics
from rlreason.trainer import train


def test_tensorboard_gets_the_reward_and_evaluation_series(tiny_recipe, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    train(tiny_recipe("train.max_steps=3", "train.report_to=[tensorboard]"), log=lambda s: None)
    out = tmp_path / "run"
    assert list((out / "rlreason").glob("events.out.tfevents.*")), sorted(p.name for p in out.rglob("*"))
    acc = EventAccumulator(str(out / "rlreason"))  # the run's scalars (a subfolder holds the config)
    acc.Reload()
    rows = read_metrics(out / "metrics.jsonl")
    reward = acc.Scalars("reward")
    assert [e.step for e in reward] == [1, 2, 3]
    want = [r["reward"] for r in rows if "reward" in r]
    assert [e.value for e in reward] == pytest.approx(want, abs=1e-6)  # the metrics.jsonl numbers
    assert [e.step for e in acc.Scalars("eval/accuracy")] == [0, 3]  # before training, at the end


def test_trackio_gets_the_reward_series_locally(tiny_recipe, tmp_path, monkeypatch):
    import importlib.util
    import sys

    if importlib.util.find_spec("trackio") is None:  # found, not imported: it reads TRACKIO_DIR once
        pytest.skip("trackio: pip install -e '.[tracking]'")
    if "trackio" in sys.modules:
        pytest.skip("trackio was imported earlier in this process, with its storage folder fixed")
    monkeypatch.setenv("TRACKIO_DIR", "unset-after-the-test")  # so that teardown removes what the run sets
    monkeypatch.delenv("TRACKIO_DIR")
    train(tiny_recipe("train.max_steps=3", "train.report_to=[trackio]"), log=lambda s: None)
    from trackio.sqlite_storage import SQLiteStorage

    db = tmp_path / "run" / "trackio"
    assert list(db.rglob("*.db")), sorted(p.name for p in (tmp_path / "run").rglob("*"))
    logs = SQLiteStorage.get_logs(project="rlreason", run="run")
    want = [r["reward"] for r in read_metrics(tmp_path / "run" / "metrics.jsonl") if "reward" in r]
    got = [row["reward"] for row in logs if "reward" in row]
    assert got == pytest.approx(want, abs=1e-6)


def test_a_tracker_that_is_not_installed_stops_before_anything_runs(tiny_recipe, tmp_path, monkeypatch):
    monkeypatch.setitem(tracking.TRACKERS, "mlflow", ("rlreason_no_such_module", "mlflow"))
    with pytest.raises(ValueError, match=r"train.report_to: mlflow not installed; `pip install mlflow`"):
        train(tiny_recipe("train.report_to=[mlflow]"), log=lambda s: None)
    out = tmp_path / "run"
    assert not out.exists() or not any(out.iterdir())


def test_tracked_values_keep_numbers_only():
    row = {"step": 4, "reward": 0.5, "kl": None, "loss": float("nan"), "strategy": "single",
           "world_size": 1, "flag": True}
    assert tracking.tracked_values(row) == {"reward": 0.5, "world_size": 1.0}
