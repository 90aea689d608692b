"""Recipes: defaults, overrides, clear errors, the resolved record."""
from __future__ import annotations

from pathlib import Path

import pytest

from rlreason.config import ConfigError, RecipeConfig, dump_config, load_config, reference

RECIPES = sorted((Path(__file__).resolve().parents[1] / "recipes").glob("*.yaml"))


def test_overrides_are_typed_and_nested(tmp_path):
    cfg = load_config(None, ["algo.beta=0.04", "train.max_steps=20", "model.lora.enabled=true",
                             "model.lora.target_modules=[q_proj, v_proj]", "data.source=x.jsonl"])
    assert cfg.algo.beta == 0.04 and cfg.train.max_steps == 20
    assert cfg.model.lora.enabled is True and cfg.model.lora.target_modules == ["q_proj", "v_proj"]
    assert cfg.data.source == "x.jsonl"


def test_unknown_key_names_the_nearest_valid_ones(tmp_path):
    with pytest.raises(ConfigError) as e:
        load_config(None, ["algo.bta=0.1"])
    assert "algo.bta" in str(e.value) and "beta" in str(e.value)
    with pytest.raises(ConfigError, match="train.learning_rte.*learning_rate"):
        load_config(None, ["train.learning_rte=1e-5"])
    with pytest.raises(ConfigError, match="unknown key 'algoo'.*algo"):
        load_config(None, ["algoo.beta=0.1"])


def test_wrong_type_and_range_name_the_field(tmp_path):
    with pytest.raises(ConfigError, match="train.max_steps"):
        load_config(None, ["train.max_steps=many"])
    with pytest.raises(ConfigError, match="algo.num_generations"):
        load_config(None, ["algo.num_generations=1"])
    with pytest.raises(ConfigError, match="algo.loss_type"):
        load_config(None, ["algo.loss_type=ppo"])


def test_bad_files_and_overrides(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("algo: [1, 2\n")
    with pytest.raises(ConfigError, match="bad.yaml.*YAML"):
        load_config(bad)
    with pytest.raises(ConfigError, match="key=value"):
        load_config(None, ["algo.beta"])


def test_resolved_config_round_trips(tmp_path):
    cfg = load_config(None, ["algo.beta=0.1", "rewards=[{name: math, weight: 2.0}]"])
    dump_config(cfg, tmp_path / "config.yaml")
    again = load_config(tmp_path / "config.yaml")
    assert again == cfg and again.rewards[0].weight == 2.0


@pytest.mark.parametrize("recipe", RECIPES, ids=[p.stem for p in RECIPES])
def test_shipped_recipes_validate(recipe):
    assert isinstance(load_config(recipe), RecipeConfig)


def test_reference_documents_every_field():
    lines = reference()
    keys = {line.split("`")[1] for line in lines}
    assert {"algo.beta", "train.learning_rate", "model.lora.r", "rollout.temperature"} <= keys
    # the fields of a list's entries too (a `rewards` entry, a `model.skills` entry)
    assert {"rewards[].name", "rewards[].weight", "rewards[].timeout_s", "rewards[].kwargs",
            "model.skills[].path"} <= keys
    assert "PydanticUndefined" not in "".join(lines)
    assert all(line.rstrip(" |").split("|")[-1].strip() for line in lines), "undocumented field"


def test_readme_reference_is_current():
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    stale = [line for line in reference() if line not in readme]
    assert not stale, f"README config reference is stale; regenerate with " \
                      f"`rlreason config --reference`: {stale[:3]}"


def test_recipe_data_paths_are_relative_to_the_recipe(tmp_path, monkeypatch):
    folder = tmp_path / "recipes"
    folder.mkdir()
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "train.jsonl").write_text('{"prompt": "1+1=", "answer": "2"}\n')
    recipe = folder / "r.yaml"
    recipe.write_text("data: {source: ../data/train.jsonl, eval_source: openai/gsm8k:main}\n")
    monkeypatch.chdir(tmp_path / "data")  # anywhere but the recipe's folder
    cfg = load_config(recipe)
    assert cfg.data.source == str((tmp_path / "data" / "train.jsonl").resolve())
    assert cfg.data.eval_source == "openai/gsm8k:main"  # a hub id stays as it is
    # an override is relative to where you are, not to the recipe
    assert load_config(recipe, ["data.source=train.jsonl"]).data.source == "train.jsonl"
    recipe.write_text("data: {source: ../data/missing.jsonl}\n")
    with pytest.raises(ConfigError, match=r"r\.yaml: data\.source: no file '\.\./data/missing\.jsonl'.*"
                                          r"looked at .*data/missing\.jsonl"):
        load_config(recipe)


def test_every_shipped_recipe_names_data_that_exists():
    root = Path(__file__).resolve().parents[1]
    for recipe in sorted((root / "recipes").glob("*.yaml")):
        cfg = load_config(recipe)
        for src in (cfg.data.source, cfg.data.eval_source):
            if src and src != "synthetic" and not src.startswith("reasoning_gym:"):  # generated, no file
                assert Path(src).is_file(), (recipe.name, src)
