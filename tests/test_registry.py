"""Registry-backed recipe fields (registry.py): built-in names, typos, and implementations of
your own named `module:attribute`, which run without touching the package."""
from __future__ import annotations

import pytest
import torch

from rlreason.config import ConfigError, load_config, reference
from rlreason.registry import BACKENDS, REWARDS, SFT_LOSSES, Registry


@pytest.fixture(autouse=True)
def _registries_restored(monkeypatch):
    """Implementations these tests register (`module:attribute`) leave with the test."""
    for registry in (BACKENDS, SFT_LOSSES, REWARDS):
        monkeypatch.setattr(registry, "_objects", dict(registry._objects))
        monkeypatch.setattr(registry, "_paths", dict(registry._paths))


def test_builtin_backends_and_sft_losses_are_listed_in_the_reference():
    assert BACKENDS.names() == ["hf", "vllm", "server"] and SFT_LOSSES.names() == ["sft", "otr"]
    lines = reference()
    assert any("`rollout.backend`" in ln and "`hf` / `vllm` / `server`" in ln for ln in lines)
    assert any("`sft.loss`" in ln and "`sft` / `otr`" in ln for ln in lines)


def test_a_typo_names_the_field_the_choices_and_the_nearest():
    with pytest.raises(ConfigError, match=r"rollout.backend.*'vlm' is not a registered rollout backend "
                                          r"\(hf, vllm, server\); did you mean vllm"):
        load_config(None, ["rollout.backend=vlm"])
    with pytest.raises(ConfigError, match=r"sft.loss.*'ort' is not a registered SFT loss.*did you mean otr"):
        load_config(None, ["sft.loss=ort"])
    with pytest.raises(ConfigError, match=r"rollout.backend 'no_such_module:make': cannot import it"):
        load_config(None, ["rollout.backend='no_such_module:make'"])


def test_reward_names_are_checked_when_the_recipe_loads():
    """Before anything is built: a typo names the nearest rewards, in `rewards` and in
    `eval.reward`; `module:function` and `trl:NAME` are left to the run (resolve_reward)."""
    with pytest.raises(ConfigError, match=r"rewards.0.name.*'mathh' is not a registered reward \(math, "
                                          r"exact_match, .*\); did you mean math"):
        load_config(None, ["rewards=[{name: mathh}]"])
    with pytest.raises(ConfigError, match=r"eval.reward.*'exact_mach'.*did you mean exact_match"):
        load_config(None, ["eval.reward=exact_mach"])
    cfg = load_config(None, ["rewards=[{name: 'trl:accuracy_reward'}, {name: 'mine:score'}]"])
    assert [r.name for r in cfg.rewards] == ["trl:accuracy_reward", "mine:score"]
    assert any("`rewards[].name`" in ln and "`math` / `exact_match`" in ln for ln in reference())


def test_a_reward_name_held_by_a_builtin_cannot_be_taken():
    """Even before the built-in's module is imported, its path holds the name."""
    from rlreason.rewards import RewardError, register_reward

    monkey = Registry("rewards[].name", "reward", {"math": "rlreason.rewards.math:math_reward"})
    with pytest.raises(ValueError, match="reward 'math' is already registered to rlreason.rewards.math:math_reward"):
        monkey.register_unique("math", len)
    with pytest.raises(RewardError, match="already registered"):
        register_reward("exact_match")(lambda completion, problem: 1.0)

    def mine(completion, problem):
        return 1.0

    assert register_reward("mine_for_this_test")(mine) is mine
    assert load_config(None, ["rewards=[{name: mine_for_this_test}]"]).rewards[0].name == "mine_for_this_test"


def test_builtins_are_imported_only_when_used():
    r = Registry("x.field", "thing", {"lazy": "no_such_module_at_all:f"})
    assert r.check("lazy") == "lazy"  # known by name, nothing imported
    with pytest.raises(ValueError, match="x.field 'no_such_module_at_all:f': cannot import it"):
        r.get("lazy")
    r.register("obj", len)
    assert r.get("obj") is len and r.names() == ["lazy", "obj"]


def test_an_sft_loss_of_your_own_is_called_with_the_sft_section(user_module):
    user_module("my_sft", "import torch\n"
                "def half_ce(logits, targets, cfg, generator=None):\n"
                "    ce = torch.nn.functional.cross_entropy(logits.float(), targets)\n"
                "    return 0.5 * ce, {'k': cfg.otr_num_samples}\n")
    cfg = load_config(None, ["sft.loss='my_sft:half_ce'", "sft.otr_num_samples=7"])
    logits, targets = torch.randn(5, 11), torch.randint(0, 11, (5,))
    loss, m = SFT_LOSSES.get(cfg.sft.loss)(logits, targets, cfg.sft)
    ce, _ = SFT_LOSSES.get("sft")(logits, targets, cfg.sft)
    assert float(loss) == pytest.approx(0.5 * float(ce)) and m == {"k": 7}


def test_a_backend_of_your_own_trains_like_the_builtin_it_wraps(tiny_recipe, tmp_path, user_module):
    """A backend in one file of the user's: `rollout.backend: my_engine:make`. It wraps the
    hf engine and counts its calls, so the run must match the hf run step for step."""
    from rlreason.trainer import train

    user_module("my_engine",
        "from rlreason.rollout.hf import HFEngine\n"
        "CALLS = []\n"
        "class Counted(HFEngine):\n"
        "    def generate(self, prompts, n, sampling):\n"
        "        CALLS.append(len(prompts))\n"
        "        return super().generate(prompts, n, sampling)\n"
        "def make(cfg, ctx):\n"
        "    return Counted(ctx.model, ctx.tokenizer, batch_size=cfg.batch_size, seed=ctx.seed,\n"
        "                   shares_module=ctx.shares_module)\n")
    import importlib

    mine = train(tiny_recipe("rollout.backend='my_engine:make'", "train.max_steps=2", "eval.num_problems=0",
                             f"train.output_dir={tmp_path / 'mine'}"), log=lambda s: None)
    builtin = train(tiny_recipe("train.max_steps=2", "eval.num_problems=0",
                                f"train.output_dir={tmp_path / 'hf'}"), log=lambda s: None)
    assert importlib.import_module("my_engine").CALLS == [4, 4]  # 2 steps x 4 prompts
    for key in ("reward", "loss", "completion_length", "grad_norm"):
        assert mine[key] == pytest.approx(builtin[key], abs=1e-6), key
