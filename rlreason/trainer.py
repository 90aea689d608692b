"""The RL loop: rollout -> reward -> advantage -> loss -> step -> sync, on accelerate.

`rl_step` is the whole algorithm and reads top to bottom; each arrow of the picture in
DESIGN.md is one call. Setup (`build_run`) and the outer loop (`train`) hold everything
else: model loading, data, checkpoints, evaluation, metrics.
"""
from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator
from accelerate.utils import set_seed

from .algos import ESTIMATORS, LOSS_NORMALIZER, LossInputs, policy_loss
from .algos.forking_tokens import top_entropy_mask
from .algos.importance import truncated_importance_weights
from .batching import PACKABLE_ATTENTION, Sequence, collate, completion_logprobs, micro_batches, stack_padded
from .checkpoint import load_checkpoint, save_checkpoint
from .config import RecipeConfig
from .data.reasoning_gym import is_reasoning_gym
from .data.splits import load_splits
from .data.stream import ProblemStream
from .data.templates import PromptEncoder
from .evaluation.grading import Grader
from .evaluation.runner import held_out_metrics
from .export import export_final
from .hub import check_push
from .logger import MetricsLogger, plot_rewards
from .models import TORCH_DTYPES, load_policy, load_reference
from .optim import make_optimizer, make_scheduler
from .rewards import RewardFunction, check_timeout_fractions, compute_rewards, rewards_from_config
from .rollout.async_rollouts import AsyncRollouts, staleness_metrics
from .rollout.dynamic_sampling import Groups, dynamic_batch
from .rollout.engine import make_engine, push_weights
from .rollout.environment import EnvFactory, env_factory
from .rollout.episodes import episode_generator, with_env_rewards
from .rollout.guidance import build_guide, encode_guided, gather_all, scored_text
from .rollout.stats import step_metrics
from .run_dir import check_run_dir, claim_run
from .sharding import (
    accumulation_boundary,
    check_deepspeed_config,
    gather_cpu,
    inference_copy,
    native_checkpoint,
    rank_share,
    reduce_in_float32,
    shards_parameters,
    strategy,
    whole_weights_at_load,
)
from .tiny import resolve_model_path
from .tracking import check_trackers, finish_trackers, tracker_sink
from .types import Completion, Problem, SamplingParams

# ---------------------------------------------------------------- the run


@dataclass
class Run:
    cfg: RecipeConfig
    accelerator: Any
    model: Any  # prepared (possibly wrapped) policy
    tokenizer: Any
    engine: Any
    optimizer: Any
    scheduler: Any
    train_data: ProblemStream
    eval_problems: list[Problem]
    rewards: list[tuple[RewardFunction, float]]
    ref_model: Any = None
    encode: Callable[[Problem], list[int]] = None  # type: ignore[assignment]
    logger: MetricsLogger | None = None
    step: int = 0
    model_path: str = ""
    weights_stale: bool = True  # the engine has not seen the policy's current weights
    guide: Any = None  # rollout.guidance.Guide when guidance is enabled
    make_env: EnvFactory | None = None  # env section: rollouts are multi-turn episodes
    rollouts: AsyncRollouts | None = None  # rollout.async_steps: batches generated ahead
    problems_by_id: dict[str, Problem] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def policy(self):
        return self.accelerator.unwrap_model(self.model)

    @property
    def generate(self):
        """(problems, prompts, n, sampling) -> completions: the engine's, or episodes in the env."""
        e = self.cfg.env
        return episode_generator(self.engine, self.tokenizer, self.make_env, max_turns=e.max_turns,
                                 max_total_tokens=e.max_total_tokens)


def _collate(run: Run, mb: list[Sequence]) -> dict[str, Any]:
    attn = getattr(run.policy.config, "_attn_implementation", None) or "eager"
    pack = run.cfg.train.packing and attn in PACKABLE_ATTENTION
    return collate(mb, run.tokenizer.pad_token_id, run.accelerator.device, pack=pack,
                   attn_implementation=attn, share_prompts=run.cfg.train.pack_shared_prompts)


def _skippable(run: Run) -> bool:
    """Sequences with advantage 0 contribute exactly zero gradient when there is no KL term
    and the loss is normalised by step-level counts (its registered normalizer); one
    plain process only, since a DDP rank that skips its backward would stall the others and
    DeepSpeed steps only from a backward."""
    a = run.cfg.algo
    return (a.skip_zero_advantage and a.beta == 0 and LOSS_NORMALIZER[a.loss_type] == "step"
            and strategy(run.accelerator) == "single")


def optimize(run: Run, seqs: list[Sequence]) -> dict[str, float]:
    """One optimizer step over all sequences, accumulated over micro-batches."""
    cfg, acc = run.cfg, run.accelerator
    W = acc.num_processes
    dropped = lambda s: cfg.algo.mask_truncated_completions and s.truncated  # noqa: E731
    n_tokens = sum(s.num_trained_tokens for s in seqs if not dropped(s))
    n_seqs = len(seqs) * W  # every rank holds an equal share of the step's sequences
    if W > 1:  # step-level normalisers count every rank's tokens
        n_tokens = int(acc.reduce(torch.tensor(n_tokens, device=acc.device), reduction="sum"))
    # DDP averages gradients over ranks; losses normalised by step-level counts are sums of
    # rank shares, so each rank's loss is scaled by W (a per-micro-batch mean is not)
    rank_scale = float(W) if LOSS_NORMALIZER[cfg.algo.loss_type] == "step" else 1.0
    trained = [s for s in seqs if s.advantage != 0.0] if _skippable(run) else seqs
    mbs = micro_batches(trained, cfg.train.micro_batch_size, cfg.algo.num_generations)
    sums: dict[str, float] = {"loss": 0.0, "frac_skipped": 1 - len(trained) / len(seqs)}
    run.model.train()
    for i, mb in enumerate(mbs):
        batch = _collate(run, mb)
        mask = batch["completion_mask"] * torch.tensor(
            [0.0 if dropped(s) else 1.0 for s in mb], device=acc.device)[:, None]
        with accumulation_boundary(acc, run.model, is_last=i == len(mbs) - 1):
            logp, entropy = completion_logprobs(run.model, batch, cfg.rollout.temperature,
                                                with_entropy=True)
            T = logp.size(1)
            old = stack_padded([s.old_logp for s in mb], T) if mb[0].old_logp is not None else logp.detach()
            ref = stack_padded([s.ref_logp for s in mb], T) if mb[0].ref_logp is not None else None
            sampler = (stack_padded([torch.tensor(s.sampler_logp, dtype=old.dtype) for s in mb], T)
                       if all(s.sampler_logp is not None for s in mb) else None)
            is_w, mm = (truncated_importance_weights(old, sampler, mask, cfg.algo.importance_sampling,
                                                     cfg.algo.importance_sampling_cap)
                        if sampler is not None else (None, {}))
            if cfg.algo.top_entropy_quantile < 1:  # forking tokens: the others weigh 0 (TRL's normalisers)
                keep = top_entropy_mask(entropy, mask, cfg.algo.top_entropy_quantile)
                is_w = keep if is_w is None else is_w * keep
            x = LossInputs(
                logp=logp, old_logp=old, ref_logp=ref, mask=mask, is_weights=is_w,
                advantages=torch.tensor([s.advantage for s in mb], device=acc.device),
                num_sequences=n_seqs, num_tokens=n_tokens, num_micro_batches=len(mbs),
                max_completion_length=cfg.rollout.max_completion_length,
            )
            loss, m = policy_loss(x, cfg.algo)  # normalised by whole-step counts
            acc.backward(loss * rank_scale)
        sums["loss"] += loss.item()
        m.update(mm)
        m["entropy"] = float((entropy * mask).sum() / mask.sum().clamp(min=1))
        w = len(mb) / len(trained)  # metrics: averages over the trained sequences
        for k, v in m.items():
            sums[k] = sums.get(k, 0.0) + v * w
    if not mbs:  # every advantage was 0: Adam still steps (momentum) on zero gradients
        for p in run.model.parameters():
            if p.requires_grad:
                p.grad = torch.zeros_like(p)
    grad_norm = acc.clip_grad_norm_(run.model.parameters(), cfg.train.max_grad_norm)
    run.optimizer.step()
    run.scheduler.step()
    run.optimizer.zero_grad(set_to_none=True)
    sums["grad_norm"] = float(grad_norm)
    return sums


def rollout(run: Run, problems: list[Problem], n: int, sampling: SamplingParams):
    """Prompt tokens -> completions (grouped per prompt) and their decoded texts."""
    prompts = [encode_guided(p, run.encode, run.tokenizer) for p in problems]
    flat = [c for g in run.generate(problems, prompts, n, sampling) for c in g]
    for c, t in zip(flat, run.tokenizer.batch_decode([c.token_ids for c in flat], skip_special_tokens=True)):
        c.text = t
    return flat


def setup_guidance(run: Run, out: Path, log: Callable[[str], None]) -> None:
    """POPE: the guided pool, from saved hardness verdicts or probed now (rollout/guidance.py)."""
    acc, sampling = run.accelerator, run.cfg.rollout.sampling()

    def sample(probs: list[Problem], k: int) -> list[list[float]]:
        # each process samples its contiguous share, the rewards are gathered in rank
        # order: every rank reaches the same verdicts and calls the engine as often
        sync_weights(run)
        n = -(-len(probs) // acc.num_processes)
        groups = _score(run, probs[acc.process_index * n : (acc.process_index + 1) * n], k, sampling)
        return gather_all([groups.rewards[i * k : (i + 1) * k] for i in range(len(groups.problems))],
                          acc.num_processes)

    run.problems_by_id = {p.id: p for p in run.train_data.problems}
    run.guide = build_guide(run.cfg.guidance, run.train_data.problems, template=run.cfg.data.template,
                            tokenizer=run.tokenizer, saved=out / "hardness.json",
                            resume=bool(run.cfg.train.resume_from), sample=sample,
                            is_main=acc.is_main_process, seed=run.cfg.train.seed, log=log)


def sync_weights(run: Run) -> None:
    """Push the policy's current weights to the engine (rollout/engine.py) unless it shares
    the module or has them already."""
    if not run.engine.shares_module and run.weights_stale:
        push_weights(run.engine, run.model, run.accelerator, lora=run.cfg.model.lora.enabled,
                     version=run.step if run.cfg.rollout.async_steps else None)  # the staleness clock
    run.weights_stale = False


def _score(run: Run, problems: list[Problem], n: int, sampling: SamplingParams,
           completions: list[Completion] | None = None) -> Groups:
    """This process's `problems`, `n` completions each (sampled now unless given), scored;
    and the timed-out reward calls over every process (a collective: every rank stops, or none)."""
    acc = run.accelerator
    completions = completions if completions is not None else rollout(run, problems, n, sampling)
    repeated = [p for p in problems for _ in range(n)]
    scored = compute_rewards([scored_text(p, c.text) for p, c in zip(repeated, completions)],  # hint counted
                             repeated, run.rewards, group_size=n, lengths=[len(c.token_ids) for c in completions])
    totals, raw = with_env_rewards(scored.totals, scored.raw, completions)
    counts = gather_cpu(torch.tensor([scored.timeouts[rf.name] for rf, _ in run.rewards]), acc)
    counts = counts.view(-1, len(run.rewards)).sum(0)
    timeouts = {rf.name: int(n) for (rf, _), n in zip(run.rewards, counts.tolist())}
    check_timeout_fractions(run.rewards, timeouts, len(repeated) * acc.num_processes)
    return Groups(problems, completions, totals, raw, sum(timeouts.values()))


def _sample(run: Run, sampling: SamplingParams) -> Groups:
    """train.prompts_per_step prompts drawn alike on every process, this one's share
    sampled and scored (POPE: guided prompts and their twins)."""
    P = run.cfg.train.prompts_per_step
    draw = run.guide.batch(run.problems_by_id, run.train_data, P) if run.guide else run.train_data.take(P)
    return _score(run, rank_share(draw, run.accelerator), run.cfg.algo.num_generations, sampling)


def _async_batch(run: Run, sampling: SamplingParams) -> tuple[Groups, dict[str, float]]:
    """rollout.async_steps: this step's batch, generated while earlier steps trained
    (rollout/async_rollouts.py), scored here; and the async/ metrics."""
    G, P = run.cfg.algo.num_generations, run.cfg.train.prompts_per_step
    if run.rollouts is None:  # at the first step, or the first after a resume (from its cursor)
        run.rollouts = AsyncRollouts(
            run.cfg.rollout.async_steps, draw=lambda: run.train_data.take(P), resume_state=run.train_data.state_dict,
            generate=lambda probs, seed: rollout(run, probs, G, dataclasses.replace(sampling, seed=seed)),
            seed=run.cfg.train.seed, first_step=run.step, last_step=run.cfg.train.max_steps - 1)
    run.rollouts.fill()
    problems, completions, timing = run.rollouts.next()
    return _score(run, problems, G, sampling, completions), {**timing, **staleness_metrics(completions, run.step)}


def rl_step(run: Run) -> dict[str, float]:
    """One GRPO step. Returns the step's metrics."""
    cfg, acc = run.cfg, run.accelerator
    G = cfg.algo.num_generations
    t0 = time.perf_counter()
    sampling = cfg.rollout.sampling()
    sync_weights(run)                                                     # weight sync
    batch, extra = _async_batch(run, sampling) if cfg.rollout.async_steps else (_sample(run, sampling), {})
    seen = batch                                                          # data, rollout, rewards
    if cfg.algo.dynamic_sampling:                                         # DAPO: informative groups
        batch, seen, extra = dynamic_batch(batch, lambda: _sample(run, sampling), cfg, acc)
    run.engine.sleep()  # vLLM sleep mode: hand its memory to the trainer until next rollout
    t_gen = time.perf_counter() - t0

    rewards_t = gather_cpu(torch.tensor(batch.rewards), acc)              # rewards [B*G], all ranks
    adv = ESTIMATORS[cfg.algo.advantage_estimator](rewards_t, G, cfg.algo)  # advantages [B*G]
    adv = adv.view(acc.num_processes, -1)[acc.process_index]
    seqs = [Sequence(prompt=c.prompt_token_ids, completion=c.token_ids,
                     advantage=float(a), truncated=c.finish_reason == "length",
                     sampler_logp=c.logprobs if sampling.temperature > 0 else None,
                     loss_mask=c.loss_mask)
            for c, a in zip(batch.completions, adv.tolist())]
    if cfg.algo.num_iterations > 1 or cfg.algo.beta > 0:                  # logprobs
        _attach_fixed_logprobs(run, seqs)
    metrics: dict[str, float] = {}
    for _ in range(cfg.algo.num_iterations):                              # loss + step
        metrics = optimize(run, seqs)
    run.weights_stale = True      # the engine syncs right before it samples next (sync_weights)

    seen_rewards = rewards_t if seen is batch else gather_cpu(torch.tensor(seen.rewards), acc)
    metrics.update(step_metrics(seen, seen_rewards, cfg.algo.num_generations, time.perf_counter() - t0, t_gen,
                                lr=run.scheduler.get_last_lr()[0], accelerator=acc, guide=run.guide), **extra)
    metrics.setdefault("kl", None)  # type: ignore[arg-type]
    return metrics


def _attach_fixed_logprobs(run: Run, seqs: list[Sequence]) -> None:
    """old_logp (for num_iterations > 1) and ref_logp (beta > 0), computed once per batch."""
    cfg = run.cfg
    run.model.eval()
    for mb in micro_batches(seqs, cfg.train.micro_batch_size, cfg.algo.num_generations):
        batch = _collate(run, mb)
        old = ref = None
        with torch.no_grad():
            if cfg.algo.num_iterations > 1:
                old = completion_logprobs(run.model, batch, cfg.rollout.temperature)[0]
            if cfg.algo.beta > 0 and run.ref_model is not None:  # the frozen copy
                ref = completion_logprobs(run.ref_model, batch, cfg.rollout.temperature)[0]
            elif cfg.algo.beta > 0:  # LoRA: the base is the policy with its adapters off
                with run.policy.disable_adapter():
                    ref = completion_logprobs(run.model, batch, cfg.rollout.temperature)[0]
        for i, s in enumerate(mb):
            n = len(s.completion)
            s.old_logp = None if old is None else old[i, :n].detach()
            s.ref_logp = None if ref is None else ref[i, :n].detach()


def evaluate(run: Run) -> dict[str, float]:
    """Held-out metrics (evaluation/runner.py, the `rlreason eval` path) on eval.num_problems."""
    problems = run.eval_problems[: run.cfg.eval.num_problems]
    if not problems:
        return {}
    sync_weights(run)
    return held_out_metrics(run.cfg, run.engine, run.tokenizer, problems, run.encode, run.extra["grader"],
                            generate=run.generate)


# ---------------------------------------------------------------- setup and loop


def build_run(cfg: RecipeConfig, log: Callable[[str], None] = print) -> Run:
    if cfg.train.threads:
        torch.set_num_threads(cfg.train.threads)
    set_seed(cfg.train.seed)
    check_trackers(cfg.train.report_to)
    accelerator = Accelerator(cpu=cfg.train.use_cpu or not torch.cuda.is_available(),
                              mixed_precision=cfg.train.mixed_precision,
                              log_with=cfg.train.report_to or None, project_dir=cfg.train.output_dir)
    cfg.check_world(accelerator.num_processes)
    check_deepspeed_config(accelerator, cfg)
    reduce_in_float32(accelerator)
    rewards = rewards_from_config(cfg.rewards, labelled=cfg.data.answer_key is not None)
    train, held = load_splits(cfg.data, cfg.train.seed)
    grader = Grader(cfg.eval.reward or cfg.rewards[0].name, timeout_s=cfg.rewards[0].timeout_s) \
        if held and cfg.eval.num_problems else None  # a reward that cannot grade fails here, before the model
    with whole_weights_at_load(accelerator):
        rg = (cfg.data.source, cfg.data.reasoning_gym) if is_reasoning_gym(cfg.data.source) else None
        path = resolve_model_path(cfg.model, cfg.data.synthetic, log=log, rg=rg)
        model, tok = load_policy(path, cfg.model, log=log)
        ref = None
        if cfg.algo.beta > 0 and not cfg.model.lora.enabled:
            ref = load_reference(path, cfg.model).to(accelerator.device)

    encode, d = PromptEncoder(tok, cfg.data), cfg.data
    train = encode.fitting(train, d.max_prompt_length, log)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = make_optimizer(params, cfg)
    scheduler = make_scheduler(optimizer, cfg)
    # the transformers backend samples from a whole copy, refreshed by sync_weights (a
    # colocated vLLM engine holds one too), when training shards parameters or rollouts
    # run in another dtype
    rollout_dtype = TORCH_DTYPES.get(cfg.rollout.dtype)
    other_dtype = rollout_dtype is not None and rollout_dtype != next(model.parameters()).dtype
    twin = None
    if cfg.rollout.backend == "hf" and (shards_parameters(accelerator) or other_dtype):
        twin = inference_copy(model, accelerator, dtype=rollout_dtype)
    model, optimizer = accelerator.prepare(model, optimizer)
    engine = make_engine(cfg.rollout, twin if twin is not None else accelerator.unwrap_model(model),
                         tok, model_path=path, seed=cfg.train.seed,
                         # an episode's later turns see the prompt and the episode so far
                         max_prompt_length=d.max_prompt_length + (cfg.env.max_total_tokens if cfg.env.name else 0),
                         shares_module=twin is None,
                         lora_rank=cfg.model.lora.r if cfg.model.lora.enabled else None)
    return Run(cfg=cfg, accelerator=accelerator, model=model, tokenizer=tok, engine=engine,
               optimizer=optimizer, scheduler=scheduler,
               train_data=ProblemStream(train, cfg.train.seed), eval_problems=held,
               rewards=rewards, ref_model=ref, encode=encode, model_path=path, extra={"grader": grader},
               make_env=env_factory(cfg.env, tok))


def save(run: Run) -> Path:
    return save_checkpoint(
        run.cfg.train.output_dir, run.step, model=run.policy, tokenizer=run.tokenizer,
        optimizer=run.optimizer, scheduler=run.scheduler,
        # asynchronous rollouts: the cursor before the oldest batch not yet trained (regenerated on resume)
        state={"data": run.rollouts.resume_state() if run.rollouts else run.train_data.state_dict(),
               "model_path": run.model_path,
               **({"guide": run.guide.state_dict()} if run.guide else {})},
        extra_rng={"sampler": run.engine.rng_state()}, keep=run.cfg.train.save_total_limit,
        accelerator=run.accelerator, sharded=native_checkpoint(run.accelerator),
        run_id=run.extra.get("run_id", ""),
    )


def train(cfg: RecipeConfig, log: Callable[[str], None] = print,
          stop_after: int | None = None) -> dict[str, Any]:
    """Run (or resume) a recipe; `stop_after` ends early after that many steps (tests)."""
    out = Path(cfg.train.output_dir)
    check_push(cfg.train)  # an upload that cannot happen fails now, not after training
    run_id, ckpt = check_run_dir(cfg)  # nothing is written before the recipe has proved usable
    run = build_run(cfg, log=log)
    run.extra["run_id"] = claim_run(cfg, run.accelerator, run_id, resuming=ckpt is not None)
    state: dict[str, Any] = {}
    if ckpt is not None:
        state, rng = load_checkpoint(ckpt, model=run.policy, optimizer=run.optimizer,
                                     scheduler=run.scheduler, accelerator=run.accelerator)
        run.train_data.load_state_dict(state["data"])
        run.engine.set_rng_state(rng["sampler"])
        run.step = state["step"]
        run.weights_stale = True
        log(f"resumed from {ckpt} at step {run.step}")
    if cfg.guidance.enabled:
        setup_guidance(run, out, log)
        if cfg.train.resume_from and "guide" in state:
            run.guide.load_state_dict(state["guide"])
    is_main = run.accelerator.is_main_process
    run.logger = MetricsLogger(out, cfg.train.max_steps, start_step=run.step,
                               log_every=cfg.train.log_every, enabled=is_main,
                               sink=tracker_sink(run.accelerator, cfg))
    t = cfg.train
    log(f"training {run.model_path} on {len(run.train_data.problems)} problems "
        f"({len(run.eval_problems)} held out): {t.max_steps} steps x {t.prompts_per_step} "
        f"prompts x {cfg.algo.num_generations} generations, loss {cfg.algo.loss_type}, "
        f"{'LoRA' if cfg.model.lora.enabled else 'full weights'}")
    if run.step == 0 and run.eval_problems:
        run.logger.log({"step": 0, **evaluate(run)})
    last: dict[str, Any] = {}
    while run.step < t.max_steps:
        metrics = rl_step(run)
        run.step += 1
        row: dict[str, Any] = {"step": run.step, **metrics}
        if cfg.eval.every_steps and run.step % cfg.eval.every_steps == 0 or run.step == t.max_steps:
            row.update(evaluate(run))
        run.logger.log(row)
        last = row
        if t.save_steps and run.step % t.save_steps == 0 and run.step < t.max_steps:
            save(run)
        if stop_after is not None and run.step >= stop_after:
            break
    stopped = stop_after is not None and run.step >= stop_after
    if not stopped:
        save(run)  # with async rollouts, before close: its cursor is the oldest untrained batch's
    if run.rollouts is not None:
        run.rollouts.close()  # batches asked for and not trained are dropped: a resume redraws them
    if stopped:
        finish_trackers(run.accelerator)
        return last
    final = out / "final"
    export_final(run, final)
    if is_main:
        if t.plot:
            plot_rewards(out / "metrics.jsonl", out / "reward_curve.png")
        run.logger.message(f"done: metrics in {out / 'metrics.jsonl'}, model in {final}")
    finish_trackers(run.accelerator)
    return last
