"""The PaST pipeline as one command: `rlreason past RECIPE`.

Round k (k = 1..rounds), on part k of the source data (file data: the k-th of `rounds`
disjoint slices of its training rows, written to data/roundk/; synthetic data: a fresh seed):
  theta_sft_k = SFT(start, source part k)          start: the recipe's model
  theta_rl_k  = GRPO(theta_sft_k + v_{k-1})         v_0 = 0
  v_k         = theta_rl_k - theta_sft_k            (so v_k includes v_{k-1})
then theta_tgt = SFT(start, target) and theta_past = theta_tgt + scale * v_K; both are
evaluated on the target's held-out (test) split. With past.scales, the scale is the one
with the best accuracy on a validation slice of the target's training rows (held out from
target SFT), and the test split is scored once, with it. With LoRA, each stage's adapter is
merged into the model it trained (stage/merged: base, plus v_{k-1} for RL) wherever a full
model is needed, as the paper does. Every stage is an ordinary run (its own folder under
train.output_dir, metrics and final model), composed from `rlreason sft`, `rlreason train`
and `rlreason skill`, so each can be inspected or resumed by hand.
"""
from __future__ import annotations

import json
import random
import shutil
from pathlib import Path
from typing import Any

from . import skills
from .config import DataConfig, RecipeConfig, SkillSpec, dump_config
from .data.splits import load_splits
from .models import TORCH_DTYPES
from .run_dir import check_output_dir, claim_output_dir
from .sft import train_sft
from .tiny import resolve_model_path
from .trainer import build_run, evaluate, train
from .types import Problem


def _stage(cfg: RecipeConfig, out: Path, *, model: str, data: DataConfig, steps: int,
           skills: list[SkillSpec] | None = None, lora: bool | None = None) -> RecipeConfig:
    m = cfg.model.model_copy(update={"name_or_path": model, "skills": skills or []})
    if lora is not None:  # evaluation stages load a full model and train nothing
        m = m.model_copy(update={"lora": m.lora.model_copy(update={"enabled": lora})})
    t = cfg.train.model_copy(update={"output_dir": str(out), "max_steps": max(steps, 1),
                                     "resume_from": None})
    return cfg.model_copy(update={"model": m, "data": data, "train": t})


def _load(cfg: RecipeConfig, data: DataConfig) -> tuple[list[Problem], list[Problem]]:
    """(train, held-out) problems of `data`, as a stage of this recipe would load them."""
    return load_splits(data, cfg.train.seed)


def _write(problems: list[Problem], path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w") as f:
        for p in problems:
            f.write(json.dumps({"id": p.id, "prompt": p.prompt, "messages": p.messages,
                                "answer": p.answer, "solution": p.solution}) + "\n")
    return path


def _as_files(data: DataConfig, train: Path, held: Path | None) -> DataConfig:
    """`data` read from files written by `_write` (prompt building settings unchanged)."""
    return data.model_copy(update={
        "source": str(train), "split": "train", "limit": None, "eval_fraction": 0.0,
        "eval_source": str(held) if held else None, "id_key": "id", "prompt_key": "prompt",
        "messages_key": "messages" if data.messages_key else None, "answer_key": "answer",
        "solution_key": "solution", "answer_extractor": "none"})


def _part(cfg: RecipeConfig, data: DataConfig, k: int, rounds: int, folder: Path) -> DataConfig:
    """Source data of round k: a fresh seed for synthetic data, else the k-th of `rounds`
    disjoint slices of the training rows (in file order; held-out rows stay held out),
    written to folder/source_part.jsonl."""
    if rounds == 1:
        return data
    if data.source == "synthetic":
        syn = data.synthetic.model_copy(update={"seed": data.synthetic.seed + 1000 * k})
        return data.model_copy(update={"synthetic": syn})
    train, held = _load(cfg, data)
    if len(train) < rounds:
        raise ValueError(f"past.rounds={rounds}: past.source_data has {len(train)} training rows, "
                         "fewer than one per round")
    part = train[(k - 1) * len(train) // rounds: k * len(train) // rounds]
    return _as_files(data, _write(part, folder / "source_part.jsonl"),
                     _write(held, folder / "source_held_out.jsonl") if held else None)


def _validation_split(cfg: RecipeConfig, data: DataConfig, fraction: float,
                      folder: Path) -> tuple[DataConfig, int]:
    """The target's training rows less a random `fraction` of them (the validation slice),
    with that slice as the held-out set: target SFT trains on the rest and reports on it,
    and the scale is picked on it; the test split is never read."""
    train, _ = _load(cfg, data)
    order = list(range(len(train)))
    random.Random(cfg.train.seed).shuffle(order)
    n = max(1, round(len(train) * fraction))
    if n >= len(train):
        raise ValueError(f"past.validation_fraction={fraction}: past.target_data has {len(train)} "
                         "training rows, too few to hold out a validation slice")
    val = set(order[:n])
    rest = [p for i, p in enumerate(train) if i not in val]
    held = [train[i] for i in sorted(val)]
    return _as_files(data, _write(rest, folder / "target_train.jsonl"),
                     _write(held, folder / "target_validation.jsonl")), n


def run_past(cfg: RecipeConfig, log=print) -> dict[str, Any]:
    p = cfg.past
    out = Path(cfg.train.output_dir)
    if cfg.train.resume_from:
        raise ValueError("train.resume_from: `rlreason past` does not resume; resume a stage "
                         "(round*/rl) with `rlreason train` instead")
    run_id = check_output_dir(out, resume_from=None, overwrite=cfg.train.overwrite_output_dir)
    if cfg.train.overwrite_output_dir:  # the stages' folders go with the previous pipeline
        for old in [*out.glob("round*"), out / "target_sft", out / "past_model", out / "eval", out / "data"]:
            shutil.rmtree(old, ignore_errors=True)
    claim_output_dir(out, run_id, overwrite=cfg.train.overwrite_output_dir, resuming=False)
    dump_config(cfg, out / "config.yaml")
    start = resolve_model_path(cfg.model, p.source_data.synthetic, log=log)
    lora = cfg.model.lora.enabled
    dtype = TORCH_DTYPES.get(cfg.model.dtype)

    def full(stage: Path, base: Path | str, prior: Path | None = None) -> Path:
        """A stage's final model as a full model folder: with LoRA, its adapter merged into
        the model the stage trained (base, plus the prior vector it loaded as a skill)."""
        if not lora:
            return stage / "final"
        return skills.merge_adapter(stage / "final", stage / "merged", base=base, dtype=dtype,
                                    vectors=[(prior, 1.0)] if prior else None)

    vector: Path | None = None
    for k in range(1, p.rounds + 1):
        rd = out / f"round{k}"
        source = _part(cfg, p.source_data, k, p.rounds, out / "data" / f"round{k}")
        sft_dir = rd / "source_sft"
        if p.source_sft_steps:
            train_sft(_stage(cfg, sft_dir, model=start, data=source, steps=p.source_sft_steps), log=log)
            theta_sft = full(sft_dir, start)
        else:
            theta_sft = Path(start)
        prior = [SkillSpec(path=str(vector))] if vector else []
        train(_stage(cfg, rd / "rl", model=str(theta_sft), data=source, steps=p.rl_steps, skills=prior),
              log=log)
        # theta_rl includes v_{k-1} (loaded as a skill), so v_k is the whole delta from theta_sft
        theta_rl = full(rd / "rl", theta_sft, vector)
        vector = rd / "skill"
        skills.extract(theta_sft, theta_rl, vector, source_recipe=str(out / "config.yaml"))
        log(f"PaST round {k}: skill vector {vector} (norm {skills.inspect(vector)['norm']:.3f})")
    assert vector is not None
    target, n_val = p.target_data, 0
    if p.scales:  # the scale is picked on a validation slice the target SFT never sees
        target, n_val = _validation_split(cfg, p.target_data, p.validation_fraction, out / "data")
    tgt_dir = out / "target_sft"
    if p.target_sft_steps:
        train_sft(_stage(cfg, tgt_dir, model=start, data=target, steps=p.target_sft_steps), log=log)
        theta_tgt = full(tgt_dir, start)
    else:
        theta_tgt = Path(start)
    results: dict[str, Any] = {"skill_vector": str(vector), "scale": p.scale, "rounds": p.rounds}
    if p.scales:
        rows = []
        for s in p.scales:
            spec = [SkillSpec(path=str(vector), scale=s)] if s else []
            run = build_run(_stage(cfg, out / "eval" / f"validation_scale_{s:g}", model=str(theta_tgt),
                                   data=target, steps=1, skills=spec, lora=False), log=lambda s: None)
            rows.append({"scale": s, **evaluate(run)})
            del run
        best = max(rows, key=lambda r: r.get("eval/accuracy", float("-inf")))  # first of the best
        results["scale"] = best["scale"]
        results["validation"] = {"fraction": p.validation_fraction, "problems": n_val,
                                 "picked_by": "eval/accuracy", "scales": rows}
        tried = ", ".join(f"{r['scale']:g}: {r.get('eval/accuracy')}" for r in rows)
        log(f"PaST: scale {best['scale']:g} picked on {n_val} validation problems ({tried})")
    past_dir = skills.apply(theta_tgt, vector, out / "past_model", scale=results["scale"])
    for name, model in (("target_sft", theta_tgt), ("target_sft_plus_skill", past_dir)):
        run = build_run(_stage(cfg, out / "eval" / name, model=str(model), data=p.target_data, steps=1,
                               lora=False), log=lambda s: None)
        results[name] = evaluate(run)
        del run
    (out / "past_results.json").write_text(json.dumps(results, indent=1))
    log(f"PaST: target SFT {results['target_sft'].get('eval/accuracy')} -> "
        f"+ {results['scale']:g} x skill {results['target_sft_plus_skill'].get('eval/accuracy')} "
        f"(eval/accuracy, test split); {out / 'past_results.json'}")
    return results
