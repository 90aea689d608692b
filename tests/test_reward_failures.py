"""Rewards that cannot be found, raise, or time out: how the CLI and the trainer report them."""
from __future__ import annotations

import sys
import time
import warnings
from pathlib import Path

import pytest

from rlreason.cli import main
from rlreason.config import RewardSpec
from rlreason.rewards import (
    RewardError,
    RewardFunction,
    check_timeout_fractions,
    compute_rewards,
    resolve_reward,
)
from rlreason.types import Problem

RECIPE = Path(__file__).resolve().parents[1] / "recipes" / "quickstart.yaml"


def _problems(n: int) -> list[Problem]:
    return [Problem(id=f"p{i}", answer="1", prompt="q") for i in range(n)]


@pytest.fixture
def module_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """tmp_path as the working directory; sys.path and sys.modules restored afterwards."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p not in ("", ".", str(tmp_path))])
    monkeypatch.delenv("PYTHONPATH", raising=False)
    monkeypatch.delenv("RLREASON_TRACEBACK", raising=False)
    before = set(sys.modules)
    yield tmp_path
    for name in set(sys.modules) - before:
        if name.startswith("cwd_reward_mod"):
            del sys.modules[name]


# --- the current directory ------------------------------------------------------------


def test_module_in_working_directory_resolves(module_dir: Path) -> None:
    (module_dir / "cwd_reward_mod_a.py").write_text(
        "def score(completion, problem):\n    return float(len(completion))\n")
    fn = resolve_reward("cwd_reward_mod_a:score")
    assert fn("abc", _problems(1)[0]) == 3.0
    assert sys.path.count(str(module_dir)) == 1 and sys.path[-1] == str(module_dir)
    resolve_reward("cwd_reward_mod_a:score")
    assert sys.path.count(str(module_dir)) == 1  # added once


def test_module_that_raises_on_import_is_a_reward_error(module_dir: Path) -> None:
    (module_dir / "cwd_reward_mod_b.py").write_text("raise RuntimeError('no config')\n")
    with pytest.raises(RewardError, match=r"cwd_reward_mod_b:score.*RuntimeError\('no config'\)"):
        resolve_reward("cwd_reward_mod_b:score")


# --- the CLI --------------------------------------------------------------------------


def _train_argv(tmp: Path, reward: str) -> list[str]:
    # reward resolution comes before data and model loading in build_run: nothing trains
    return ["train", str(RECIPE), f"rewards=[{{name: '{reward}'}}]", f"train.output_dir={tmp / 'run'}",
            "train.plot=false"]


def test_unimportable_reward_stops_cli_with_one_line(module_dir: Path, capsys) -> None:
    assert main(_train_argv(module_dir, "cwd_reward_mod_missing:score")) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert "cwd_reward_mod_missing:score" in lines[0] and "No module named" in lines[0]
    assert "--traceback" in lines[0]


def test_missing_function_stops_cli_with_one_line(module_dir: Path, capsys) -> None:
    (module_dir / "cwd_reward_mod_c.py").write_text("def other(c, p):\n    return 1.0\n")
    assert main(_train_argv(module_dir, "cwd_reward_mod_c:missing_fn")) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert "cwd_reward_mod_c:missing_fn" in err and "no attribute" in err


def test_traceback_flag_reraises(module_dir: Path) -> None:
    with pytest.raises(RewardError, match="cwd_reward_mod_missing") as info:
        main(["--traceback", *_train_argv(module_dir, "cwd_reward_mod_missing:score")])
    assert isinstance(info.value.__cause__, ImportError)


def test_traceback_env_reraises(module_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RLREASON_TRACEBACK", "1")
    with pytest.raises(RewardError, match="cwd_reward_mod_missing"):
        main(_train_argv(module_dir, "cwd_reward_mod_missing:score"))


def test_cli_reports_raising_reward_on_one_line(monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    """A reward raising mid-run: the message names reward, problem, completion and cause."""
    import rlreason.trainer

    def fake_train(cfg):
        rf = RewardFunction(lambda c, p: 1 / 0, name="my_module:my_fn")
        compute_rewards(["line one\nline two"], [Problem(id="x", answer="1", prompt="q")], [(rf, 1.0)])

    monkeypatch.setattr(rlreason.trainer, "train", fake_train)
    assert main(["train", str(RECIPE)]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert "reward 'my_module:my_fn' on problem 'x'" in err
    assert "ZeroDivisionError('division by zero')" in err and r"line one\nline two" in err

    with pytest.raises(RewardError) as info:
        main(["--traceback", "train", str(RECIPE)])
    assert isinstance(info.value.__cause__, ZeroDivisionError)


# --- timeouts -------------------------------------------------------------------------


def _sleepy(slow_ids: set[str]):
    def reward(completion: str, problem: Problem) -> float:
        if not slow_ids or problem.id in slow_ids:
            time.sleep(1.0)
        return 1.0

    return reward


def _score(rf: RewardFunction, n: int = 4, **kw):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return compute_rewards(["c"] * n, _problems(n), [(rf, 1.0)], **kw)


def test_all_calls_timing_out_stop_the_step() -> None:
    rf = RewardFunction(_sleepy(set()), name="slow", timeout_s=0.05, max_timeout_fraction=0.5)
    scored = _score(rf)
    with pytest.raises(RewardError) as info:
        check_timeout_fractions([(rf, 1.0)], scored.timeouts, 4)
    msg = str(info.value)
    assert "reward 'slow' timed out on 4/4 calls this step" in msg
    assert "max_timeout_fraction 0.5 of rewards[0]" in msg and "rewards[0].timeout_s" in msg


def test_timeouts_allowed_by_fraction_one_score_zero_and_are_counted() -> None:
    rf = RewardFunction(_sleepy(set()), name="slow", timeout_s=0.05, max_timeout_fraction=1.0)
    scored = _score(rf)
    check_timeout_fractions([(rf, 1.0)], scored.timeouts, 4)  # 4/4 is not more than 1.0
    totals, raw = scored
    assert totals == [0.0] * 4 and raw == {"slow": [0.0] * 4}
    assert scored.timeouts == {"slow": 4}


def test_few_timeouts_continue_and_are_counted() -> None:
    fast = RewardFunction(lambda c, p: 1.0, name="fast", max_timeout_fraction=0.5)
    rf = RewardFunction(_sleepy({"p2"}), name="slow", timeout_s=0.05, max_timeout_fraction=0.5)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        scored = compute_rewards(["c"] * 4, _problems(4), [(fast, 1.0), (rf, 1.0)])
    check_timeout_fractions([(fast, 1.0), (rf, 1.0)], scored.timeouts, 4)  # 1/4 <= 0.5: no stop
    assert scored.raw["slow"] == [1.0, 1.0, 0.0, 1.0]
    assert scored.timeouts == {"fast": 0, "slow": 1}


def test_other_callers_do_not_stop_on_timeouts() -> None:
    """Evaluation and guidance probing call compute_rewards alone: counted, never stopped."""
    rf = RewardFunction(_sleepy(set()), name="slow", timeout_s=0.05, max_timeout_fraction=0.5)
    assert _score(rf).timeouts == {"slow": 4}


def test_reward_spec_max_timeout_fraction() -> None:
    assert RewardSpec(name="math").max_timeout_fraction == 0.5
    with pytest.raises(ValueError):
        RewardSpec(name="math", max_timeout_fraction=1.5)


# --- the trainer ----------------------------------------------------------------------


def _fake_run(monkeypatch: pytest.MonkeyPatch, reward, max_timeout_fraction: float):
    """A Run whose rollout and optimizer are stubs: rl_step's reward path, no model."""
    from types import SimpleNamespace

    import rlreason.trainer as tr
    from rlreason.config import load_config
    from rlreason.data.stream import ProblemStream
    from rlreason.types import Completion

    cfg = load_config(RECIPE, ["algo.beta=0", "algo.num_generations=2", "train.prompts_per_step=2"])
    monkeypatch.setattr(tr, "sync_weights", lambda run: None)
    monkeypatch.setattr(tr, "rollout", lambda run, problems, k, sampling: [
        Completion(prompt_token_ids=[1], token_ids=[2, 3], logprobs=[-0.1, -0.1], finish_reason="stop")
        for _ in range(len(problems) * k)])
    monkeypatch.setattr(tr, "optimize", lambda run, seqs: {"loss": 0.0})
    rf = RewardFunction(reward, name="slow", timeout_s=0.05, max_timeout_fraction=max_timeout_fraction)
    acc = SimpleNamespace(num_processes=1, process_index=0, distributed_type="NO")
    return tr.Run(cfg=cfg, accelerator=acc, model=None, tokenizer=None,
                  engine=SimpleNamespace(sleep=lambda: None), optimizer=None,
                  scheduler=SimpleNamespace(get_last_lr=lambda: [1e-4]),
                  train_data=ProblemStream(_problems(8), 0), eval_problems=[], rewards=[(rf, 1.0)])


def test_rl_step_logs_timeouts(monkeypatch: pytest.MonkeyPatch) -> None:
    from rlreason.trainer import rl_step

    run = _fake_run(monkeypatch, lambda c, p: 1.0, 0.5)
    assert rl_step(run)["rewards/timeouts"] == 0
    run = _fake_run(monkeypatch, _sleepy(set()), 1.0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        metrics = rl_step(run)
    assert metrics["rewards/timeouts"] == 4 and metrics["reward"] == 0.0


def test_rl_step_stops_when_most_calls_time_out(monkeypatch: pytest.MonkeyPatch) -> None:
    from rlreason.trainer import rl_step

    run = _fake_run(monkeypatch, _sleepy(set()), 0.5)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        with pytest.raises(RewardError, match=r"'slow' timed out on 4/4 calls this step"):
            rl_step(run)
