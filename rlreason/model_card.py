"""The model card written into `final/`: what a reader of a published model needs.

A README.md with the hub's metadata header (base model, library, tags, datasets) followed by
the recipe that produced the model, the training curve in numbers (mean reward of the first
and last steps, every held-out evaluation) and the last evaluation's metrics. Everything
comes from the run's own records (the resolved recipe and metrics.jsonl), so the card says
what happened, not what was intended.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from .config import DATA_FILE_SUFFIXES
from .logger import read_metrics


def _dataset_name(source: str | None) -> str | None:
    """A hub dataset id as the hub names it; a local file by its file name."""
    if not source or source == "synthetic":
        return None
    if Path(source).suffix.lower() in DATA_FILE_SUFFIXES:
        return Path(source).name
    return source.split(":")[0]


def model_card(cfg, metrics_file: Path) -> str:
    """The card's text for run `cfg` whose metrics are in `metrics_file`."""
    rows = read_metrics(metrics_file) if metrics_file.is_file() else []
    steps = [r for r in rows if "reward" in r]
    evals = [r for r in rows if "eval/accuracy" in r]
    base = cfg.model.name_or_path
    datasets = [d for d in (_dataset_name(cfg.data.source), _dataset_name(cfg.data.eval_source)) if d]
    meta: dict[str, Any] = {
        "library_name": "peft" if cfg.model.lora.enabled else "transformers",
        "tags": ["rlreason", "grpo", "reinforcement-learning", cfg.algo.loss_type],
        **({"base_model": base} if base != "tiny" and not Path(base).exists() else {}),
        **({"datasets": datasets} if datasets else {}),
    }
    lines = ["---", yaml.safe_dump(meta, sort_keys=False).rstrip(), "---", "",
             f"# {Path(cfg.train.output_dir).name}", "",
             f"Trained with rlreason: {cfg.algo.loss_type} on `{base}`, "
             f"{'LoRA r=' + str(cfg.model.lora.r) if cfg.model.lora.enabled else 'full weights'}, "
             f"{len(steps)} steps of {cfg.train.prompts_per_step} prompts x {cfg.algo.num_generations} "
             f"completions, reward {', '.join(r.name for r in cfg.rewards)}.", ""]
    if steps:
        k = min(10, len(steps))
        first = sum(r["reward"] for r in steps[:k]) / k
        last = sum(r["reward"] for r in steps[-k:]) / k
        lines += ["## Training", "", f"Mean training reward: {first:.3f} over the first {k} steps, "
                  f"{last:.3f} over the last {k}.", ""]
    if evals:
        lines += ["## Held-out evaluation", "", "| step | accuracy |", "| --- | --- |"]
        lines += [f"| {r['step']} | {r['eval/accuracy']:.3f} |" for r in evals]
        last_eval = {k: v for k, v in evals[-1].items() if k.startswith("eval/") and v is not None}
        lines += ["", f"Last evaluation (step {evals[-1]['step']}):", "", "| metric | value |", "| --- | --- |"]
        lines += [f"| {k.removeprefix('eval/')} | {v:.4g} |" for k, v in last_eval.items()]
        lines += [""]
    lines += ["## Recipe", "", "```yaml", yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False).rstrip(),
              "```", ""]
    return "\n".join(lines)


def write_model_card(cfg, folder: Path, metrics_file: Path) -> Path:
    path = Path(folder) / "README.md"
    path.write_text(model_card(cfg, metrics_file), encoding="utf-8")
    return path
