"""A run folder is never clobbered, and a checkpoint never runs code when loaded."""
from __future__ import annotations

import hashlib
import json
import pickle
from pathlib import Path

import pytest
import torch

from rlreason.checkpoint import list_checkpoints, resolve_checkpoint, safe_load
from rlreason.logger import read_metrics
from rlreason.run_dir import OutputDirError, check_output_dir, claim_output_dir, read_run_id
from rlreason.trainer import train


def _snapshot(folder: Path) -> dict[str, str]:
    """Every file under `folder` with its content hash (and modification time)."""
    return {str(p.relative_to(folder)): hashlib.sha1(p.read_bytes()).hexdigest() + f"@{p.stat().st_mtime_ns}"
            for p in sorted(folder.rglob("*")) if p.is_file()}


def _fake_checkpoint(out: Path, step: int, run_id: str | None) -> Path:
    d = out / "checkpoints" / f"step_{step:06d}"
    d.mkdir(parents=True)
    state = {"step": step, **({"run_id": run_id} if run_id is not None else {})}
    (d / "trainer_state.json").write_text(json.dumps(state))
    return d


def test_second_run_into_a_used_folder_is_refused_and_changes_nothing(tiny_recipe, tmp_path):
    train(tiny_recipe("train.max_steps=2", "train.save_steps=1"), log=lambda s: None)
    out = tmp_path / "run"
    before = _snapshot(out)
    assert "run.json" in before and "final/config.json" in before
    with pytest.raises(OutputDirError, match="resume_from=latest.*overwrite_output_dir=true"):
        train(tiny_recipe("train.max_steps=3"), log=lambda s: None)
    assert _snapshot(out) == before
    # a resume that fails validation leaves config.yaml (and everything else) as it was
    with pytest.raises(ValueError, match="rewards"):
        train(tiny_recipe("train.max_steps=3", "train.resume_from=latest", "rewards=[]"), log=lambda s: None)
    assert _snapshot(out) == before
    # explicit overwrite: the previous run's files go, the new run is alone in the folder
    old_id = read_run_id(out)
    train(tiny_recipe("train.max_steps=3", "train.save_steps=1", "train.overwrite_output_dir=true"),
          log=lambda s: None)
    assert read_run_id(out) != old_id
    assert [p.name for p in list_checkpoints(out)] == ["step_000002", "step_000003"]
    assert [r["step"] for r in read_metrics(out / "metrics.jsonl") if "reward" in r] == [1, 2, 3]


def test_invalid_recipe_writes_nothing_into_the_folder(tiny_recipe, tmp_path):
    out = tmp_path / "run"
    with pytest.raises(ValueError, match="rewards"):
        train(tiny_recipe("rewards=[]"), log=lambda s: None)
    assert not out.exists() or not any(out.iterdir())


def test_rotation_and_latest_ignore_another_runs_checkpoints(tmp_path):
    out = tmp_path / "run"
    for step in (30, 40):
        _fake_checkpoint(out, step, "oldrun")
    for step in (5, 10):
        _fake_checkpoint(out, step, "newrun")
    assert [p.name for p in list_checkpoints(out, "newrun")] == ["step_000005", "step_000010"]
    assert resolve_checkpoint(out, "latest", "newrun").name == "step_000010"
    assert len(list_checkpoints(out)) == 4  # without a run id: everything complete


def test_resume_latest_takes_the_folders_own_run(tiny_recipe, tmp_path):
    """Checkpoints of another run left in the folder (here: a higher step) are not resumed."""
    train(tiny_recipe("train.max_steps=2", "train.save_steps=1"), log=lambda s: None, stop_after=1)
    out = tmp_path / "run"
    stranger = _fake_checkpoint(out, 40, "someone-else")
    (stranger / "rng.pt").write_bytes(b"not a checkpoint")
    train(tiny_recipe("train.max_steps=2", "train.save_steps=1", "train.resume_from=latest"),
          log=lambda s: None)
    steps = [r["step"] for r in read_metrics(out / "metrics.jsonl") if "reward" in r]
    assert steps == [1, 2]
    assert stranger.is_dir()  # rotation kept two of *this* run's checkpoints, not the stranger's


def test_check_output_dir_cases(tmp_path):
    out = tmp_path / "o"
    rid = check_output_dir(out, resume_from=None, overwrite=False)  # absent: fine
    claim_output_dir(out, rid, overwrite=False, resuming=False)
    assert read_run_id(out) == rid
    with pytest.raises(OutputDirError, match="not empty"):
        check_output_dir(out, resume_from=None, overwrite=False)
    assert check_output_dir(out, resume_from="latest", overwrite=False) == rid
    with pytest.raises(OutputDirError, match="choose one"):
        check_output_dir(out, resume_from="latest", overwrite=True)
    with pytest.raises(OutputDirError, match="another run"):
        check_output_dir(out, resume_from="/elsewhere/step_000001", overwrite=False,
                         checkpoint_run_id="other")
    (tmp_path / "empty").mkdir()
    assert check_output_dir(tmp_path / "empty", resume_from=None, overwrite=False)


class _Payload:
    """Unpickling this runs Path.touch(marker): what a crafted checkpoint file could do."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def test_crafted_pickle_in_a_checkpoint_does_not_execute(tiny_recipe, tmp_path):
    train(tiny_recipe("train.max_steps=2", "train.save_steps=1"), log=lambda s: None, stop_after=1)
    ckpt = tmp_path / "run" / "checkpoints" / "step_000001"
    marker = tmp_path / "pwned"
    torch.save({"lr_lambdas": [None], "evil": _Payload(marker)}, ckpt / "scheduler.pt")
    with pytest.raises(ValueError, match="scheduler.pt: refused to load"):
        train(tiny_recipe("train.max_steps=2", "train.resume_from=latest"), log=lambda s: None)
    assert not marker.exists()
    with open(marker.with_suffix(".pkl"), "wb") as f:  # a plain pickle, not torch.save
        pickle.dump(_Payload(marker), f)
    with pytest.raises(ValueError, match="refused"):
        safe_load(marker.with_suffix(".pkl"))
    assert not marker.exists()


def test_every_checkpoint_file_loads_with_weights_only(tiny_recipe, tmp_path):
    """What rlreason writes needs nothing beyond weights_only (the resume tests then cover
    that the values restore exactly)."""
    train(tiny_recipe("train.max_steps=1", "algo.beta=0.04"), log=lambda s: None)
    ckpt = list_checkpoints(tmp_path / "run")[-1]
    for name in ("optimizer.pt", "scheduler.pt", "rng.pt"):
        assert safe_load(ckpt / name) is not None
