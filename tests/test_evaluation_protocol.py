"""The experiments' shared protocol code (evaluation/protocol.py): the tuning pick, the
pre-declared cuts, the compute counts read from a run folder, and the splits' disjointness."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "evaluation"))

import protocol as P  # noqa: E402


def test_pick_takes_the_best_mean_and_the_first_entry_on_a_tie():
    best, means = P.pick(["a", "b", "c"], {0: [0.1, 0.3], 1: [0.4, 0.2], 2: [0.0, 0.5]})
    assert best == 1 and means == pytest.approx([0.2, 0.3, 0.25])
    best, _ = P.pick(["a", "b"], {0: [0.5, 0.5], 1: [0.25, 0.75]})
    assert best == 0


def test_cuts_apply_in_the_declared_order_and_respect_the_floors():
    grids = {"lr": [1, 2, 3, 4]}
    assert P.apply_cuts(0, (100, 101), grids, {"rl": 400}, 0.5, {"rl": 250}) == (
        [100, 101], {"lr": [1, 2, 3, 4]}, {"rl": 400})
    assert P.apply_cuts(1, (100, 101), grids, {"rl": 400}, 0.5, {"rl": 250})[0] == [100]
    assert P.apply_cuts(2, (100, 101), grids, {"rl": 400}, 0.5, {"rl": 250})[1] == {"lr": [1, 2]}
    assert P.apply_cuts(2, (100, 101), grids, {"rl": 400}, 0.5, {"rl": 250})[2] == {"rl": 400}
    assert P.apply_cuts(3, (100, 101), grids, {"rl": 400}, 0.5, {"rl": 250})[2] == {"rl": 250}
    assert P.apply_cuts(3, (100, 101), grids, {"rl": 400}, 0.8, {"rl": 250})[2] == {"rl": 320}


def _metrics(path: Path, rows: list[dict]) -> None:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def test_rl_compute_counts_training_and_probe_samples(tmp_path):
    _metrics(tmp_path / "metrics.jsonl", [{"step": 1, "reward": 0.0, "completion_length": 3.0},
                                          {"step": 2, "reward": 0.5, "completion_length": 2.0}])
    (tmp_path / "config.yaml").write_text("guidance:\n  probe_samples: 4\n  ladder: [0.5]\n")
    (tmp_path / "hardness.json").write_text(json.dumps({
        "p1": {"hard": True, "k": 8, "hint_works": True, "hint_fraction": 0.5}, "p2": {"hard": False, "k": 8},
        "p3": {"hard": True, "k": 8, "hint_works": False, "hint_fraction": 0.5}}))
    c = P.rl_compute(tmp_path, prompts_per_step=2, generations=4)
    # 2 steps x 8 samples; tokens 3*8 + 2*8; probes 3 problems x 8, plus 2 hard x 4 on one rung
    assert c["steps"] == 2 and c["samples_training"] == 16 and c["tokens"] == 40
    assert c["samples_probes"] == 24 + 8 and c["samples"] == 16 + 32
    assert c["hard_problems"] == 2 and c["hints_that_work"] == 1
    # two rungs, shortest first: p1 stops at the first (1 x 4), p3 and p4 sample both (2 x 4 each)
    (tmp_path / "config.yaml").write_text("guidance:\n  probe_samples: 4\n  ladder: [0.5, 0.25]\n")
    (tmp_path / "hardness.json").write_text(json.dumps({
        "p1": {"hard": True, "k": 8, "hint_works": True, "hint_fraction": 0.25},
        "p3": {"hard": True, "k": 8, "hint_works": False, "hint_fraction": 0.5},
        "p4": {"hard": True, "k": 8, "hint_works": True, "hint_fraction": 0.5}}))
    c = P.rl_compute(tmp_path, prompts_per_step=2, generations=4)
    assert c["samples_probes"] == 3 * 8 + (1 + 2 + 2) * 4 and c["hint_fractions"] == {"0.25": 1, "0.5": 2}


def test_a_finished_run_of_the_same_recipe_is_reused_and_another_is_not(tmp_path):
    from rlreason.config import dump_config, load_config

    cfg = load_config(None, ["train.max_steps=7"])
    assert not P.finished(tmp_path, cfg)
    dump_config(cfg, tmp_path / "config.yaml")
    (tmp_path / "final").mkdir()
    (tmp_path / "final" / "config.json").write_text("{}")
    assert P.finished(tmp_path, cfg)
    assert not P.finished(tmp_path, load_config(None, ["train.max_steps=8"]))
    import yaml  # a field the schema gained since (absent from the saved file) is not compared

    saved = yaml.safe_load((tmp_path / "config.yaml").read_text())
    del saved["train"]["push_to_hub"]
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(saved))
    assert P.finished(tmp_path, cfg)


def test_sft_compute_and_sums(tmp_path):
    _metrics(tmp_path / "metrics.jsonl", [
        {"step": i, "loss": 1.0, "step_time_s": t, "target_tokens": 100} for i, t in [(1, 0.2), (2, 0.4), (3, 0.3)]])
    c = P.sft_compute(tmp_path, examples_per_step=64)
    assert c == {"steps": 3, "examples": 192, "median_step_s": 0.3, "tokens": 300}
    assert P.sum_compute([c, c]) == {"examples": 384, "steps": 6, "tokens": 600}
    assert P.sum_compute([{"tokens": None, "steps": 1}, {"tokens": 5, "steps": 1}]) == {"steps": 2, "tokens": None}


@pytest.mark.parametrize("script", ["pope_synthetic", "otr_synthetic", "past_synthetic"])
def test_validation_and_test_sets_are_disjoint_from_training_and_each_other(script):
    mod = __import__(script)
    from rlreason.config import load_config
    from rlreason.data.synthetic import synthetic_splits

    def train_set(overrides):
        return {p.prompt for p in synthetic_splits(load_config(None, overrides).data.synthetic)[0]}

    if script == "pope_synthetic":
        task = "3digit"
        seen = set().union(*(train_set([*mod.COMMON, *mod.task_overrides(task), *arm])
                             for arm in mod.ARMS.values()))
        pairs = [mod.splits(task)]
    elif script == "otr_synthetic":
        seen = mod.train_prompts()
        pairs = mod.eval_sets().values()
    else:
        seen = train_set(mod.TARGET)
        pairs = [mod.eval_sets()]
    for val, test in pairs:
        v, t = {p.prompt for p in val}, {p.prompt for p in test}
        assert len(v) == len(val) and len(t) == len(test)
        assert not v & t and not v & seen and not t & seen


def _square_and_threads(x: int) -> tuple[int, int]:
    import torch

    return x * x, torch.get_num_threads()


def test_pmap_keeps_job_order_and_runs_workers_with_one_thread():
    jobs = [(i,) for i in range(5)]
    assert P.pmap(_square_and_threads, jobs, 1) == [_square_and_threads(i) for i in range(5)]
    side_by_side = P.pmap(_square_and_threads, jobs, 2)
    assert [sq for sq, _ in side_by_side] == [0, 1, 4, 9, 16]
    assert {threads for _, threads in side_by_side} == {1}
