"""Shared pytest fixtures."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def benchmarks_dir() -> Path:
    """The benchmark files the project ships: $RLREASON_BENCHMARKS_DIR, else <repo>/data."""
    env = os.environ.get("RLREASON_BENCHMARKS_DIR")
    path = Path(env) if env else REPO_ROOT / "data"
    assert (path / "gsm8k_test.jsonl").is_file(), f"benchmark files missing from {path}"
    return path


@pytest.fixture(scope="session", autouse=True)
def _isolated_cache(tmp_path_factory):
    """Tests build their tiny models in a temporary cache, never in ~/.cache."""
    old = os.environ.get("RLREASON_CACHE")
    os.environ["RLREASON_CACHE"] = str(tmp_path_factory.mktemp("rlreason-cache"))
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    yield
    if old is None:
        os.environ.pop("RLREASON_CACHE", None)
    else:
        os.environ["RLREASON_CACHE"] = old


TINY_OVERRIDES = [
    "model.tiny.num_layers=2", "model.tiny.hidden_size=64", "model.tiny.intermediate_size=128",
    "model.tiny.warmstart_steps=150", "model.tiny.warmstart_lr=3e-3",
    "data.synthetic.num_train=200", "data.synthetic.num_eval=16",
    "rollout.max_completion_length=6", "algo.num_generations=4",
    "train.prompts_per_step=4", "train.micro_batch_size=8", "train.max_steps=4",
    "train.learning_rate=1e-3", "train.plot=false", "eval.num_problems=16",
    "rewards=[{name: exact_match}]",
]


@pytest.fixture
def tiny_recipe(tmp_path):
    """A RecipeConfig for a tiny, fast run in tmp_path; extra dotted overrides on top."""
    from rlreason.config import load_config

    def make(*overrides: str):
        return load_config(None, [*TINY_OVERRIDES, f"train.output_dir={tmp_path / 'run'}",
                                  *overrides])

    return make


# POPE on a task the warm start did not see (3-digit sums after 2-digit warm-up): hard
# problems to probe and guide within two steps
GUIDED_OVERRIDES = [
    "guidance.enabled=true", "guidance.probe_k=2", "guidance.probe_limit=12", "guidance.ladder=[0.5]",
    "data.synthetic.difficulty=3", "model.tiny.warmstart_data={difficulty: 2}", "train.max_steps=2",
    "algo.skip_zero_advantage=false",
]


@pytest.fixture
def train_seeing_batches(monkeypatch):
    """train(cfg) that returns the sequences of every optimizer step, as the trainer built them."""
    from rlreason import trainer as T

    def run(cfg):
        seen = []
        real = T.optimize

        def spy(r, seqs):
            seen.append(seqs)
            return real(r, seqs)

        monkeypatch.setattr(T, "optimize", spy)
        T.train(cfg, log=lambda s: None)
        monkeypatch.setattr(T, "optimize", real)
        return seen

    return run


@pytest.fixture
def user_module(tmp_path, monkeypatch):
    """Write `source` as the module `name` in tmp_path, importable for this test: the way a
    user's own reward, loss or backend (`module:attribute`) is found."""

    def write(name: str, source: str) -> None:
        (tmp_path / f"{name}.py").write_text(source)
        monkeypatch.syspath_prepend(str(tmp_path))

    return write
