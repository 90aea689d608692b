"""The PaST pipeline as one command: `rlreason past RECIPE`.

Round k (k = 1..rounds), on part k of the source data (for synthetic data, a fresh seed):
  theta_sft_k = SFT(start, source part k)          start: the recipe's model
  theta_rl_k  = GRPO(theta_sft_k + v_{k-1})         v_0 = 0
  v_k         = theta_rl_k - theta_sft_k
then theta_tgt = SFT(start, target) and theta_past = theta_tgt + scale * v_K; both are
evaluated on the target's held-out split. Every stage is an ordinary run (its own folder
under train.output_dir, metrics and final model), composed from `rlreason sft`,
`rlreason train` and `rlreason skill`, so each can be inspected or resumed by hand.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from .config import DataConfig, RecipeConfig, SkillSpec, dump_config


def _stage(cfg: RecipeConfig, out: Path, *, model: str, data: DataConfig, steps: int,
           skills: list[SkillSpec] | None = None) -> RecipeConfig:
    m = cfg.model.model_copy(update={"name_or_path": model, "skills": skills or []})
    t = cfg.train.model_copy(update={"output_dir": str(out), "max_steps": max(steps, 1),
                                     "resume_from": None})
    return cfg.model_copy(update={"model": m, "data": data, "train": t})


def _part(data: DataConfig, k: int, rounds: int) -> DataConfig:
    """Source data of round k: a fresh seed for synthetic data, else the k-th slice."""
    if rounds == 1:
        return data
    if data.source == "synthetic":
        syn = data.synthetic.model_copy(update={"seed": data.synthetic.seed + 1000 * k})
        return data.model_copy(update={"synthetic": syn})
    return data  # files: each round sees the whole source (slicing needs row counts; see note)


def run_past(cfg: RecipeConfig, log=print) -> dict[str, Any]:
    from . import skills
    from .models import resolve_model_path
    from .run_dir import check_output_dir, claim_output_dir
    from .sft import train_sft
    from .trainer import build_run, evaluate, train

    p = cfg.past
    out = Path(cfg.train.output_dir)
    if cfg.train.resume_from:
        raise ValueError("train.resume_from: `rlreason past` does not resume; resume a stage "
                         "(round*/rl) with `rlreason train` instead")
    run_id = check_output_dir(out, resume_from=None, overwrite=cfg.train.overwrite_output_dir)
    if cfg.train.overwrite_output_dir:  # the stages' folders go with the previous pipeline
        for old in [*out.glob("round*"), out / "target_sft", out / "past_model", out / "eval"]:
            shutil.rmtree(old, ignore_errors=True)
    claim_output_dir(out, run_id, overwrite=cfg.train.overwrite_output_dir, resuming=False)
    dump_config(cfg, out / "config.yaml")
    start = resolve_model_path(cfg.model, p.source_data.synthetic, log=log)
    vector: Path | None = None
    for k in range(1, p.rounds + 1):
        rd = out / f"round{k}"
        source = _part(p.source_data, k, p.rounds)
        sft_dir = rd / "source_sft"
        if p.source_sft_steps:
            train_sft(_stage(cfg, sft_dir, model=start, data=source, steps=p.source_sft_steps), log=log)
            theta_sft = sft_dir / "final"
        else:
            theta_sft = Path(start)
        prior = [SkillSpec(path=str(vector))] if vector else []
        train(_stage(cfg, rd / "rl", model=str(theta_sft), data=source, steps=p.rl_steps, skills=prior),
              log=log)
        vector = rd / "skill"
        skills.extract(theta_sft, rd / "rl" / "final", vector, source_recipe=str(out / "config.yaml"))
        log(f"PaST round {k}: skill vector {vector} (norm {skills.inspect(vector)['norm']:.3f})")
    assert vector is not None
    tgt_dir = out / "target_sft"
    if p.target_sft_steps:
        train_sft(_stage(cfg, tgt_dir, model=start, data=p.target_data, steps=p.target_sft_steps), log=log)
        theta_tgt = tgt_dir / "final"
    else:
        theta_tgt = Path(start)
    past_dir = skills.apply(theta_tgt, vector, out / "past_model", scale=p.scale)
    results: dict[str, Any] = {"skill_vector": str(vector), "scale": p.scale, "rounds": p.rounds}
    for name, model in (("target_sft", theta_tgt), ("target_sft_plus_skill", past_dir)):
        run = build_run(_stage(cfg, out / "eval" / name, model=str(model), data=p.target_data, steps=1),
                        log=lambda s: None)
        results[name] = evaluate(run)
    (out / "past_results.json").write_text(json.dumps(results, indent=1))
    log(f"PaST: target SFT {results['target_sft'].get('eval/accuracy')} -> "
        f"+ skill {results['target_sft_plus_skill'].get('eval/accuracy')} (eval/accuracy); "
        f"{out / 'past_results.json'}")
    return results
