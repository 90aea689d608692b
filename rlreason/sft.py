"""Supervised fine-tuning on (prompt, target) pairs: the warm-start before RL.

Only target tokens (and the EOS that ends them) carry loss; prompt tokens are context.
"""
from __future__ import annotations

import random
from collections.abc import Callable

import torch
import torch.nn.functional as F


def encode_pairs(tokenizer, pairs: list[tuple[str, str]]) -> list[tuple[list[int], list[int]]]:
    """Token ids of each (prompt, target), EOS appended to the target."""
    out = []
    for prompt, target in pairs:
        p = tokenizer(prompt, add_special_tokens=False)["input_ids"]
        t = tokenizer(target, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
        out.append((p, t))
    return out


def collate_sft(batch: list[tuple[list[int], list[int]]], pad_id: int):
    """Right-padded input ids, attention mask and labels (-100 on prompt and padding)."""
    length = max(len(p) + len(t) for p, t in batch)
    ids = torch.full((len(batch), length), pad_id, dtype=torch.long)
    labels = torch.full((len(batch), length), -100, dtype=torch.long)
    mask = torch.zeros((len(batch), length), dtype=torch.long)
    for i, (p, t) in enumerate(batch):
        seq = p + t
        ids[i, : len(seq)] = torch.tensor(seq)
        labels[i, len(p) : len(seq)] = torch.tensor(t)
        mask[i, : len(seq)] = 1
    return ids, mask, labels


def sft_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean next-token cross-entropy over labelled positions. logits [B,L,V], labels [B,L]."""
    return F.cross_entropy(
        logits[:, :-1].reshape(-1, logits.size(-1)).float(), labels[:, 1:].reshape(-1),
        ignore_index=-100,
    )


def supervised_warmstart(model, tokenizer, pairs: list[tuple[str, str]], *, steps: int,
                         batch_size: int, lr: float, seed: int = 0,
                         probe: Callable[[], float] | None = None, target: float | None = None,
                         check_every: int = 10, log: Callable[[str], None] | None = None) -> list[float]:
    """AdamW, linear warmup then constant LR; returns the loss per step.

    Constant rather than decaying: a warm-start stopped part-way should leave a policy
    that is still improving (measured on the synthetic task: cosine decay to zero froze
    the tiny model before it had learned the carry, and RL could not recover it).

    With `probe` (accuracy of the model as it is) and `target`, training stops at the first
    check where the probe reaches the target. Why: the model learns the carry abruptly
    (loss 1.3 -> 0.2 within ~150 steps), so where a fixed step count lands depends on float
    rounding: 450 steps gave 0.62 held-out accuracy on an AVX-512 CPU and 0.92 on an AVX2
    one. A target pins the competence RL starts from on every machine.
    """
    data = encode_pairs(tokenizer, pairs)
    rng = random.Random(seed)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    warm = min(50, max(1, steps // 10))
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda i: min(1.0, (i + 1) / warm))
    model.train()
    losses = []
    for _ in range(steps):
        ids, mask, labels = collate_sft(rng.sample(data, min(batch_size, len(data))),
                                        tokenizer.pad_token_id)
        loss = sft_loss(model(input_ids=ids, attention_mask=mask).logits, labels)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        losses.append(loss.item())
        step = len(losses)
        if step % check_every == 0 or step == steps:
            acc = probe() if probe is not None else None
            model.train()
            reached = acc is not None and target is not None and acc >= target
            if log is not None and (step % (5 * check_every) == 0 or reached or step == steps):
                shown = "" if acc is None else f", probe accuracy {acc:.2f}" + (
                    f" (target {target:.2f})" if target is not None else "")
                recent = losses[-5 * check_every:]
                log(f"  warm-start step {step}/{steps}: loss {sum(recent) / len(recent):.3f}{shown}")
            if reached:
                break
    else:
        if target is not None and log is not None:
            log(f"  warm-start: the target accuracy {target:.2f} was not reached in {steps} steps "
                "(model.tiny.warmstart_steps); RL starts from a weaker model")
    model.eval()
    return losses


# ---------------------------------------------------------------- recipe-driven SFT / OTR


def sft_step(run, cfg) -> dict[str, float]:
    """One optimizer step of supervised training on (prompt, oracle solution) pairs.

    The batch goes through the same tensors as RL (packed sequences, prompt tokens as
    context): only the target tokens and the EOS after them carry loss. The loss is a mean
    over all target tokens of the step, accumulated over micro-batches.
    """
    import time

    from .algos.otr import otr_loss, sft_token_loss
    from .batching import Sequence, collate, completion_logits, micro_batches
    from .trainer import rank_share

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
    run.model.train()
    for mb in micro_batches(seqs, cfg.train.micro_batch_size):
        batch = collate(mb, tok.pad_token_id, acc.device, pack=attn in ("sdpa",),
                        attn_implementation=attn)
        logits, targets = completion_logits(run.model, batch)
        if cfg.sft.loss == "otr":
            loss, m = otr_loss(logits, targets, num_samples=cfg.sft.otr_num_samples,
                               temperature=cfg.sft.otr_temperature, beta=cfg.sft.otr_beta,
                               closed_form=cfg.sft.otr_closed_form,
                               generator=run.extra.setdefault("otr_gen", _generator(cfg, acc)))
        else:
            loss, m = sft_token_loss(logits, targets)
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
    from pathlib import Path

    from .hub import check_push
    from .logger import MetricsLogger, plot_rewards
    from .tracking import finish_trackers
    from .trainer import build_run, check_run_dir, claim_run, evaluate, export_final, tracker_sink

    out = Path(cfg.train.output_dir)
    if cfg.train.resume_from:
        raise ValueError("train.resume_from: `rlreason sft` does not resume; start it again")
    check_push(cfg.train)
    run_id, _ = check_run_dir(cfg)
    run = build_run(cfg, log=log)
    missing = [p.id for p in run.train_data.problems if not (p.solution or p.answer)]
    if missing:
        raise ValueError(f"sft: problems without a target (data.solution_key): {missing[:3]}")
    claim_run(run, run_id, resuming=False)
    logger = run.logger = MetricsLogger(out, cfg.train.max_steps, log_every=cfg.train.log_every,
                                        enabled=run.accelerator.is_main_process, sink=tracker_sink(run))
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
