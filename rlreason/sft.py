"""`rlreason sft`: recipe-driven supervised fine-tuning on (prompt, oracle solution) pairs,
with cross-entropy (`sft.loss: sft`) or one-token rollouts (`sft.loss: otr`).

Only target tokens (and the EOS that ends them) carry loss; prompt tokens are context. The
run is built by the trainer's `build_run` (same model, data, optimizer, trackers and run
folder rules as `rlreason train`); the tiny model's warm start is tiny.py's, not this loop.
"""
from __future__ import annotations

import time
from pathlib import Path

import torch

from .batching import Sequence, collate, completion_logits, micro_batches
from .export import export_final
from .hub import check_push
from .logger import MetricsLogger, plot_rewards
from .registry import SFT_LOSSES
from .run_dir import check_run_dir, claim_run
from .sharding import rank_share
from .tracking import finish_trackers, tracker_sink
from .trainer import build_run, evaluate


def sft_step(run, cfg) -> dict[str, float]:
    """One optimizer step of supervised training on (prompt, oracle solution) pairs.

    The batch goes through the same tensors as RL (packed sequences, prompt tokens as
    context): only the target tokens and the EOS after them carry loss. The loss is a mean
    over all target tokens of the step, accumulated over micro-batches.
    """
    t0 = time.perf_counter()
    tok, acc = run.tokenizer, run.accelerator
    problems = rank_share(run.train_data.take(cfg.train.prompts_per_step), acc)
    seqs = [Sequence(prompt=run.encode(p), advantage=0.0, truncated=False,
                     completion=tok(p.solution or p.answer, add_special_tokens=False)["input_ids"]
                     + [tok.eos_token_id]) for p in problems]
    n_total = sum(len(s.completion) for s in seqs)
    W = acc.num_processes
    if W > 1:  # a token mean over the global batch: DDP averages, so scale shares by W
        n_total = int(acc.reduce(torch.tensor(n_total, device=acc.device), reduction="sum"))
    attn = getattr(run.policy.config, "_attn_implementation", None) or "eager"
    sums: dict[str, float] = {}
    loss_fn = SFT_LOSSES.get(cfg.sft.loss)
    if "otr_gen" not in run.extra:  # one sampling stream for the whole run (OTR draws from it)
        run.extra["otr_gen"] = _generator(cfg, acc)
    run.model.train()
    for mb in micro_batches(seqs, cfg.train.micro_batch_size):
        batch = collate(mb, tok.pad_token_id, acc.device, pack=attn in ("sdpa",),
                        attn_implementation=attn)
        logits, targets = completion_logits(run.model, batch)
        loss, m = loss_fn(logits, targets, cfg.sft, run.extra["otr_gen"])
        w = targets.numel() / n_total
        acc.backward(loss * w * W)
        m["loss"] = loss.item()
        for k, v in m.items():
            sums[k] = sums.get(k, 0.0) + v * w
    sums["grad_norm"] = float(acc.clip_grad_norm_(run.model.parameters(), cfg.train.max_grad_norm))
    run.optimizer.step()
    run.scheduler.step()
    run.optimizer.zero_grad(set_to_none=True)
    dt = time.perf_counter() - t0
    sums.update({"step_time_s": dt, "tokens_per_s": n_total / dt, "target_tokens": n_total,
                 "lr": run.scheduler.get_last_lr()[0]})
    return sums


def _generator(cfg, acc) -> torch.Generator:
    g = torch.Generator(device=acc.device)
    g.manual_seed(cfg.train.seed)
    return g


def train_sft(cfg, log=print) -> dict:
    """`rlreason sft`: the recipe's data, model, optimizer and evaluation, with a supervised
    loss (`sft.loss`: sft or otr) instead of rollouts."""
    out = Path(cfg.train.output_dir)
    if cfg.train.resume_from:
        raise ValueError("train.resume_from: `rlreason sft` does not resume; start it again")
    check_push(cfg.train)
    run_id, _ = check_run_dir(cfg)
    run = build_run(cfg, log=log)
    missing = [p.id for p in run.train_data.problems if not (p.solution or p.answer)]
    if missing:
        raise ValueError(f"sft: problems without a target (data.solution_key): {missing[:3]}")
    run.extra["run_id"] = claim_run(cfg, run.accelerator, run_id, resuming=False)
    logger = run.logger = MetricsLogger(out, cfg.train.max_steps, log_every=cfg.train.log_every,
                                        enabled=run.accelerator.is_main_process,
                                        sink=tracker_sink(run.accelerator, cfg))
    log(f"sft ({cfg.sft.loss}) on {len(run.train_data.problems)} examples: "
        f"{cfg.train.max_steps} steps x {cfg.train.prompts_per_step}")
    if run.eval_problems:
        logger.log({"step": 0, **evaluate(run)})
    row: dict = {}
    for step in range(1, cfg.train.max_steps + 1):
        row = {"step": step, **sft_step(run, cfg)}
        if (cfg.eval.every_steps and step % cfg.eval.every_steps == 0) or step == cfg.train.max_steps:
            run.weights_stale = True
            row.update(evaluate(run))
        logger.log(row)
        run.step = step
    export_final(run, out / "final")  # weights, tokenizer, model card; pushed if asked
    if cfg.train.plot:
        plot_rewards(out / "metrics.jsonl", out / "reward_curve.png")
    logger.message(f"done: metrics in {out / 'metrics.jsonl'}, model in {out / 'final'}")
    finish_trackers(run.accelerator)
    return row
