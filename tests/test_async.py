"""Asynchronous rollouts (rollout.async_steps): the overlap's bookkeeping, staleness through a
real rollout server, exact resume, and what is refused."""
from __future__ import annotations

import json
import threading
import time

import pytest
from serving import running_server

from rlreason.config import ConfigError, load_config
from rlreason.rollout.async_rollouts import AsyncRollouts, staleness_metrics
from rlreason.types import Completion, Problem


def _problems(start: int, k: int) -> list[Problem]:
    return [Problem(id=f"p{i}", prompt=f"{i}=", answer="0") for i in range(start, start + k)]


def test_batches_are_asked_for_ahead_and_never_older_than_the_depth():
    """A fake engine stamps each batch with the weight version it holds when it generates;
    the trainer bumps the version after each step, as its push would."""
    version, cursor, seen_threads = {"v": 0}, {"i": 0}, set()

    def draw():
        cursor["i"] += 2
        return _problems(cursor["i"] - 2, 2)

    def generate(problems, seed):
        seen_threads.add(threading.current_thread().name)
        v = version["v"]  # the weights the engine holds when it takes the request
        time.sleep(0.01)
        return [[Completion([1], [2], [0.0], "stop", policy_version=v)] for _ in problems]

    for depth in (1, 2):
        version["v"], cursor["i"] = 0, 0
        r = AsyncRollouts(depth, draw, generate, resume_state=lambda: {"cursor": cursor["i"]}, seed=3)
        ages, order = [], []
        for step in range(6):
            version["v"] = step  # pushed before asking
            r.fill()
            assert len(r.pending) == depth + 1
            problems, groups, timing = r.next()
            order += [p.id for p in problems]
            m = staleness_metrics([c for g in groups for c in g], step)
            ages.append(m["async/staleness_max"])
            assert timing["async/wait_s"] >= 0 and timing["async/gen_wait_s"] >= 0
            assert r.resume_state() == {"cursor": 2 * (step + 1)}  # before the oldest untrained batch
            time.sleep(0.03)  # training: the next batches are generated meanwhile
        r.close()
        assert max(ages) <= depth and ages[-1] >= 1  # stale, but never by more than the depth
        assert order == [f"p{i}" for i in range(12)]  # drawn in step order, none skipped
    assert seen_threads and all(t.startswith("rlreason-rollouts") for t in seen_threads)
    cursor["i"] = 0
    last = AsyncRollouts(2, draw, generate, resume_state=lambda: {"cursor": cursor["i"]}, seed=0, last_step=1)
    last.fill()
    assert [p.step for p in last.pending] == [0, 1]  # nothing is asked for beyond the run's last step
    last.close()
    assert r.batch_seed(5) == 3 * 1_000_003 + 5


@pytest.mark.parametrize("overrides,message", [
    (["rollout.async_steps=1"], r"rollout.backend=server .*hf generates in this process"),
    (["rollout.async_steps=1", "rollout.backend=vllm"], r"vllm generates in this process"),
    (["rollout.async_steps=1", "rollout.backend=server", "algo.dynamic_sampling=true"], "dynamic_sampling"),
])
def test_async_needs_a_server_and_names_what_it_does_not_support(overrides, message):
    with pytest.raises(ConfigError, match=message):
        load_config(None, overrides)
    cfg = load_config(None, ["rollout.async_steps=1", "rollout.backend=server"])
    with pytest.raises(ValueError, match="one training process"):
        cfg.check_world(2)


@pytest.fixture(scope="module")
def server():
    """One `rlreason serve` (transformers engine) on the tests' tiny warm-started model."""
    from conftest import TINY_OVERRIDES

    from rlreason.tiny import resolve_model_path

    cfg = load_config(None, TINY_OVERRIDES)
    with running_server(resolve_model_path(cfg.model, cfg.data.synthetic, log=lambda s: None)) as url:
        yield url


def _train(tiny_recipe, server, monkeypatch, *overrides, stop_after=None):
    """(metrics rows, problem ids of every batch trained, in order) of a run through `server`."""
    import rlreason.trainer as T
    from rlreason.logger import read_metrics

    ids: list[list[str]] = []
    real = getattr(T._score, "__wrapped__", T._score)  # not an earlier call's spy

    def spy(run, problems, n, sampling, completions=None):
        ids.append([p.id for p in problems])
        return real(run, problems, n, sampling, completions)

    spy.__wrapped__ = real
    monkeypatch.setattr(T, "_score", spy)
    cfg = tiny_recipe("rollout.backend=server", f"rollout.server_url={server}", "eval.num_problems=0", *overrides)
    T.train(cfg, log=lambda s: None, stop_after=stop_after)
    rows = [r for r in read_metrics(f"{cfg.train.output_dir}/metrics.jsonl") if "reward" in r]
    return rows, ids


@pytest.mark.slow
def test_async_steps_zero_is_the_synchronous_path(tiny_recipe, server, monkeypatch):
    import rlreason.trainer as T

    class Refuse:
        def __init__(self, *a, **k):
            raise AssertionError("async_steps=0 must not start asynchronous rollouts")

    monkeypatch.setattr(T, "AsyncRollouts", Refuse)
    rows, ids = _train(tiny_recipe, server, monkeypatch, "train.max_steps=3")
    assert [r["step"] for r in rows] == [1, 2, 3] and len(ids) == 3
    assert not any(k.startswith("async/") for r in rows for k in r)


@pytest.mark.slow
def test_one_step_ahead_trains_batches_at_most_one_step_stale(tiny_recipe, server, monkeypatch):
    rows, ids = _train(tiny_recipe, server, monkeypatch, "train.max_steps=5", "rollout.async_steps=1",
                       "algo.skip_zero_advantage=false")  # the loss (and its weights) on every step
    assert [r["step"] for r in rows] == [1, 2, 3, 4, 5]
    assert all(r["async/staleness_max"] <= 1 for r in rows)
    assert rows[0]["async/staleness_max"] == 0  # the first batch comes from the first weights
    assert max(r["async/staleness_max"] for r in rows[1:]) == 1  # later ones were generated a step early
    assert all(r["async/wait_s"] >= 0 and r["async/gen_wait_s"] >= 0 for r in rows)
    assert all(r["is_weight_mean"] > 0 and r["logprob_diff_max"] >= 0 for r in rows)  # importance-weighted
    flat = [i for batch in ids for i in batch]
    assert len(flat) == len(set(flat)) == 5 * 4  # every batch trained once, none twice


@pytest.mark.slow
def test_resume_with_async_neither_loses_nor_repeats_a_prompt(tiny_recipe, server, monkeypatch, tmp_path):
    common = ("train.max_steps=4", "rollout.async_steps=2", "train.save_steps=2")
    _, straight = _train(tiny_recipe, server, monkeypatch, *common, f"train.output_dir={tmp_path / 'a'}")
    # stopped after step 3 (generated up to step 5's batch, checkpoint at step 2), then resumed
    _, first = _train(tiny_recipe, server, monkeypatch, *common, f"train.output_dir={tmp_path / 'b'}",
                      stop_after=3)
    _, second = _train(tiny_recipe, server, monkeypatch, *common, f"train.output_dir={tmp_path / 'b'}",
                       "train.resume_from=latest")
    resumed = first[:2] + second  # what the checkpoint at step 2 holds, then the resumed steps 3 and 4
    assert len(straight) == len(resumed) == 4
    assert resumed == straight  # the same prompts in the same order: none lost, none trained twice
    flat = [i for batch in resumed for i in batch]
    assert len(flat) == len(set(flat)) == 16
    # the final checkpoint's cursor is after the 16 trained prompts, not the batches drawn ahead
    state = json.loads((tmp_path / "a" / "checkpoints" / "step_000004" / "trainer_state.json").read_text())
    assert state["data"] == {"epoch": 0, "position": 16}
