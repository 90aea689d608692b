"""Time GRPO optimizer steps on CPU: rlreason's `rl_step` vs TRL's `GRPOTrainer`.

Both systems train the same freshly initialised small Llama (saved once to a temporary
folder, loaded from there by both) on the same 256 "a+b=" prompts with the same reward,
8 prompts x 4 generations per step, up to 64 new tokens, beta 0, learning rate 1e-4.
The TRL side reproduces the peer setup of shared/baselines/trl_grpo_cpu.py (copied here
so this script is self-contained); its step time is the span between the Trainer's
on_step_begin and on_step_end callbacks, i.e. generation + reward + loss + backward +
optimizer step. The rlreason side times `rlreason.trainer.rl_step(run)`, which does the
same work.

The first `--warmup` steps (default 2) of each system are excluded from its median.
Both systems run in this one process. By default their steps alternate: after each TRL
step (outside its timed span) one rlreason step runs, so load from other tenants of the
machine, which drifts over tens of seconds here, falls on both alike; run one after the
other, the ratio moved by +-10% between runs. `--schedule sequential` runs all of
rlreason's steps and then TRL's; `--only` runs a single system.

TRL turns gradient checkpointing on by default; a user of a small model turns it off, so
by default TRL is timed both ways (`--trl-gradient-checkpointing both`): two interleaved
passes, each against a fresh rlreason side, and both ratios reported. `--size` scales the
problem: `large` is a ~14x larger model (8 layers, hidden 768), `long` 4x longer completions
(256 new tokens), to show how the cost of each system grows.

usage:
  python benchmarks/grpo_step_cpu.py --steps 12 --out benchmarks/results/grpo_step_cpu.json
  python benchmarks/grpo_step_cpu.py --size large --steps 6 --out benchmarks/results/grpo_step_cpu_large.json
  python benchmarks/grpo_step_cpu.py --steps 4 --only rlreason
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import statistics
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from machine import machine_info  # noqa: E402

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch  # noqa: E402

SEED = 0
NUM_PROMPTS = 256
PROMPTS_PER_STEP = 8
NUM_GENERATIONS = 4
# model and completion length per --size: base is the peer's setup
SIZES = {
    "base": {"hidden": 256, "intermediate": 768, "layers": 4, "heads": 4, "max_completion_length": 64},
    "large": {"hidden": 768, "intermediate": 2048, "layers": 8, "heads": 12, "max_completion_length": 64},
    # every completion exactly 128 tokens (a minimum length in both systems): 4x the base's
    # mean (~32: the random model emits EOS early whatever the limit)
    "long": {"hidden": 256, "intermediate": 768, "layers": 4, "heads": 4, "max_completion_length": 128,
             "min_completion_length": 128},
}
LEARNING_RATE = 1e-4
TARGET_RATIO = 0.5  # against TRL with gradient checkpointing off where timed
TRL_GC_MODES = {"default": [None], "off": [False], "both": [None, False]}
GC_SUFFIX = {None: "", False: "_no_gradient_checkpointing"}
LORA = {"r": 8, "alpha": 16, "target_modules": ["q_proj", "v_proj"]}  # the peer's --lora


# ---------------------------------------------------------------- shared setup (as the peer's)


def build_model(path: str, size: dict) -> None:
    """The peer's char tokenizer + a tied LlamaConfig of `size` (base: 256/768, 4 layers, 4
    heads, the peer's), saved to `path`."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    chars = list("0123456789+-*=() \n") + list("abcdefghijklmnopqrstuvwxyz:.")
    vocab = {"<pad>": 0, "<s>": 1, "</s>": 2}
    for c in chars:
        vocab.setdefault(c, len(vocab))
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<pad>"))
    tok.pre_tokenizer = pre_tokenizers.Split("", behavior="isolated")
    tok.decoder = decoders.Fuse()
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>",
                                   pad_token="<pad>", unk_token="<pad>")
    cfg = LlamaConfig(vocab_size=len(vocab), hidden_size=size["hidden"], intermediate_size=size["intermediate"],
                      num_hidden_layers=size["layers"], num_attention_heads=size["heads"],
                      num_key_value_heads=size["heads"],
                      max_position_embeddings=max(256, 2 * size["max_completion_length"]),
                      bos_token_id=1, eos_token_id=2,
                      pad_token_id=0, tie_word_embeddings=True)
    seed_all(SEED)
    LlamaForCausalLM(cfg).save_pretrained(path)
    fast.save_pretrained(path)


def make_rows() -> list[dict[str, str]]:
    rng = random.Random(SEED)
    rows = []
    for _ in range(NUM_PROMPTS):
        a, b = rng.randint(0, 99), rng.randint(0, 99)
        rows.append({"prompt": f"{a}+{b}=", "answer": str(a + b)})
    return rows


def seed_all(seed: int = SEED) -> None:
    random.seed(seed)
    torch.manual_seed(seed)


def summarize(times: list[float], cpu_times: list[float], lengths: list[float],
              warmup: int) -> dict:
    timed = times[warmup:] if len(times) > warmup else times
    lens = lengths[warmup:] if len(lengths) > warmup else lengths
    return {
        "median_step_s": statistics.median(timed) if timed else None,
        "min_step_s": min(timed) if timed else None,
        "step_times_s": [round(t, 4) for t in times],
        # CPU seconds this process used per step (all threads): a step whose wall time
        # grew while its CPU time did not was slowed by other load on the machine.
        "step_cpu_s": [round(t, 4) for t in cpu_times],
        "timed_steps": len(timed),
        "mean_completion_length": statistics.fmean(lens) if lens else None,
        "completion_length_per_step": [round(x, 2) for x in lengths],
    }


# ---------------------------------------------------------------- rlreason


def starts_with(completion: str, problem) -> float:
    return 1.0 if completion.strip().startswith(problem.answer) else 0.0


class RlreasonSteps:
    """rlreason's side, one timed `rl_step` per call, so the steps can run alone or
    interleaved with TRL's (see `--schedule`)."""

    def __init__(self, model_dir: str, work: str, steps: int, rollout_dtype: str = "auto",
                 lora: bool = False, lengths: tuple[int, int] = (0, 64), tag: str = ""):
        from rlreason.config import RecipeConfig
        from rlreason.rewards import RewardFunction
        from rlreason.trainer import build_run

        data = Path(work) / "add.jsonl"
        data.write_text("".join(json.dumps(r) + "\n" for r in make_rows()))
        cfg = RecipeConfig.model_validate({
            "model": {"name_or_path": model_dir, "dtype": "float32",
                      "lora": {"enabled": lora, **LORA}},
            "data": {"source": str(data), "template": "plain"},
            "rewards": [{"name": "exact_match"}],  # replaced by `starts_with` below
            "rollout": {"backend": "hf", "temperature": 1.0, "top_p": 1.0,
                        "min_completion_length": lengths[0], "max_completion_length": lengths[1],
                        "dtype": rollout_dtype},
            # loss_type: TRL 1.16's GRPOConfig default is "dapo"; adam/scheduler as TRL's defaults.
            # skip_zero_advantage off: the untrained model scores 0 on every sample, so every
            # advantage is 0 and rlreason would (exactly) skip all training work; TRL does not,
            # and the comparison is about the same work.
            "algo": {"num_generations": NUM_GENERATIONS, "beta": 0.0, "loss_type": "dapo",
                     "skip_zero_advantage": False},
            "train": {"output_dir": str(Path(work) / f"rlreason_out_{rollout_dtype}{tag}"), "max_steps": steps,
                      "prompts_per_step": PROMPTS_PER_STEP, "micro_batch_size": 32,
                      "learning_rate": LEARNING_RATE, "lr_scheduler": "linear",
                      "adam_beta2": 0.999, "seed": SEED, "plot": False},
            "eval": {"num_problems": 0},
        })
        self.cfg = cfg
        self.run = build_run(cfg, log=lambda *_: None)
        self.run.rewards = [(RewardFunction(starts_with, name="starts_with"), 1.0)]
        self.times: list[float] = []
        self.cpu_times: list[float] = []
        self.lengths: list[float] = []
        self.gen_times: list[float] = []
        self.rewards: list[float] = []

    def step(self) -> None:
        from rlreason.trainer import rl_step

        c0, t0 = time.process_time(), time.perf_counter()
        m = rl_step(self.run)
        self.times.append(time.perf_counter() - t0)
        self.cpu_times.append(time.process_time() - c0)
        self.run.step += 1
        self.lengths.append(m["completion_length"])
        self.gen_times.append(m["generation_time_s"])
        self.rewards.append(m["reward"])

    def summary(self, warmup: int) -> dict:
        out = summarize(self.times, self.cpu_times, self.lengths, warmup)
        timed_gen = self.gen_times[warmup:] if len(self.gen_times) > warmup else self.gen_times
        out.update({
            "generation_time_s": [round(t, 4) for t in self.gen_times],
            "median_generation_s": statistics.median(timed_gen),
            "mean_reward": statistics.fmean(self.rewards),
            "gradient_checkpointing": self.cfg.model.gradient_checkpointing,
            "loss_type": self.cfg.algo.loss_type,
            "torch_threads": torch.get_num_threads(),
        })
        return out


def bench_rlreason(model_dir: str, work: str, steps: int, warmup: int, rollout_dtype: str = "auto",
                   lora: bool = False, lengths: tuple[int, int] = (0, 64)) -> dict:
    seed_all()
    side = RlreasonSteps(model_dir, work, steps, rollout_dtype, lora, lengths)
    for _ in range(steps):
        side.step()
    return side.summary(warmup)


# ---------------------------------------------------------------- TRL


def bench_trl(model_dir: str, work: str, steps: int, warmup: int,
              between_steps: Callable[[], None] | None = None, lora: bool = False,
              lengths: tuple[int, int] = (0, 64),
              gradient_checkpointing: bool | None = None) -> dict:
    """`between_steps` runs after each TRL step, outside its timed span (interleaving);
    `gradient_checkpointing` None keeps TRL's default (on)."""
    from datasets import Dataset
    from transformers import TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    class StepTimer(TrainerCallback):
        def __init__(self):
            self.times: list[float] = []
            self.cpu_times: list[float] = []

        def on_step_begin(self, *a, **k):
            self.c, self.t = time.process_time(), time.perf_counter()

        def on_step_end(self, *a, **k):
            self.times.append(time.perf_counter() - self.t)
            self.cpu_times.append(time.process_time() - self.c)
            if between_steps is not None:
                between_steps()

    def reward(completions, answer, **kw):
        return [1.0 if c.strip().startswith(x) else 0.0 for c, x in zip(completions, answer)]

    gc = {} if gradient_checkpointing is None else {"gradient_checkpointing": gradient_checkpointing}
    cfg = GRPOConfig(output_dir=str(Path(work) / "trl_out"), per_device_train_batch_size=32,
                     num_generations=NUM_GENERATIONS, max_completion_length=lengths[1],
                     generation_kwargs={"min_new_tokens": lengths[0]} if lengths[0] else None,
                     max_steps=steps, learning_rate=LEARNING_RATE, logging_steps=1, report_to=[],
                     use_cpu=True, bf16=False, save_strategy="no", seed=SEED, beta=0.0, **gc)
    timer = StepTimer()
    seed_all()
    peft_config = None
    if lora:
        from peft import LoraConfig

        peft_config = LoraConfig(r=LORA["r"], lora_alpha=LORA["alpha"], target_modules=LORA["target_modules"],
                                 task_type="CAUSAL_LM")
    trainer = GRPOTrainer(model=model_dir, reward_funcs=reward, args=cfg, peft_config=peft_config,
                          train_dataset=Dataset.from_list(make_rows()), callbacks=[timer])
    gen_times: list[float] = []
    if hasattr(trainer, "_generate"):  # time generation too (same span rlreason reports)
        inner = trainer._generate

        def timed_generate(*a, **k):
            t0 = time.perf_counter()
            try:
                return inner(*a, **k)
            finally:
                gen_times.append(time.perf_counter() - t0)

        trainer._generate = timed_generate
    trainer.train()
    hist = [h for h in trainer.state.log_history if "completions/mean_length" in h]
    mean_lengths = [float(h["completions/mean_length"]) for h in hist]
    rewards = [float(h["reward"]) for h in hist if "reward" in h]
    out = summarize(timer.times, timer.cpu_times, mean_lengths, warmup)
    timed_gen = gen_times[warmup:] if len(gen_times) > warmup else gen_times
    out.update({
        "generation_time_s": [round(t, 4) for t in gen_times],
        "median_generation_s": statistics.median(timed_gen) if timed_gen else None,
        "mean_reward": statistics.fmean(rewards) if rewards else None,
        "gradient_checkpointing": bool(cfg.gradient_checkpointing),
        "loss_type": cfg.loss_type,
        "torch_threads": torch.get_num_threads(),
    })
    return out


# ---------------------------------------------------------------- environment


def env_info() -> dict:
    import transformers

    try:
        import trl
        trl_version = trl.__version__
    except ImportError:
        trl_version = None
    return {
        **machine_info(),
        "torch_threads": torch.get_num_threads(),
        "torch_interop_threads": torch.get_num_interop_threads(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "trl": trl_version,
        "loadavg_start": None,
        "loadavg_end": None,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=12, help="optimizer steps per system")
    ap.add_argument("--warmup", type=int, default=2, help="first steps excluded from the median")
    ap.add_argument("--out", default="benchmarks/results/grpo_step_cpu.json")
    ap.add_argument("--only", choices=["rlreason", "trl"], default=None)
    ap.add_argument("--schedule", choices=["interleaved", "sequential"], default="interleaved",
                    help="interleaved (default): one rlreason step after each TRL step, so both "
                         "see the same machine load; sequential: all rlreason steps, then TRL's")
    ap.add_argument("--lora", action="store_true",
                    help="both systems train LoRA adapters (r 8, alpha 16, q_proj and v_proj: the peer's --lora)")
    ap.add_argument("--size", choices=sorted(SIZES), default="base",
                    help="base: the peer's model and 64 new tokens; large: 8 layers, hidden 768; "
                         "long: every completion 128 tokens (4x the base's mean)")
    ap.add_argument("--trl-gradient-checkpointing", choices=sorted(TRL_GC_MODES), default="both",
                    help="TRL as it comes (default: on), off (as a small-model user runs it), or both")
    ap.add_argument("--bf16-rollouts", action="store_true",
                    help="also time rlreason with rollout.dtype=bfloat16 (fp32 training, bf16 sampling)")
    args = ap.parse_args()
    if args.steps <= args.warmup:
        ap.error(f"--steps ({args.steps}) must exceed --warmup ({args.warmup})")
    warnings.filterwarnings("ignore")

    env = env_info()
    env["loadavg_start"] = list(os.getloadavg())
    result: dict = {
        "settings": {
            "size": args.size,
            "model": (f"LlamaConfig(vocab 49, hidden {SIZES[args.size]['hidden']}, intermediate "
                      f"{SIZES[args.size]['intermediate']}, {SIZES[args.size]['layers']} layers, "
                      f"{SIZES[args.size]['heads']} heads, tied embeddings), random init seed 0, float32"),
            "tokenizer": "character-level WordLevel (peer's)",
            "num_prompts": NUM_PROMPTS,
            "prompts_per_step": PROMPTS_PER_STEP,
            "num_generations": NUM_GENERATIONS,
            "sequences_per_step": PROMPTS_PER_STEP * NUM_GENERATIONS,
            "max_completion_length": SIZES[args.size]["max_completion_length"],
            "min_completion_length": SIZES[args.size].get("min_completion_length", 0),
            "trl_gradient_checkpointing": args.trl_gradient_checkpointing,
            "temperature": 1.0,
            "top_p": 1.0,
            "learning_rate": LEARNING_RATE,
            "beta": 0.0,
            "loss_type": "dapo",
            "reward": "1.0 if completion.strip().startswith(answer) else 0.0",
            "steps": args.steps,
            "warmup_steps_excluded": args.warmup,
            "median": "statistics.median over steps[warmup:]",
            "process": (f"only {args.only}" if args.only else
                        "same process, one rlreason step after each TRL step (outside TRL's timed span)"
                        if args.schedule == "interleaved" else "same process, rlreason then trl"),
            "device": "cpu",
            "lora": LORA if args.lora else None,
        },
        "rlreason": None,
        "trl": None,
        "ratio": None,
        "target_ratio": TARGET_RATIO,
        "meets_target": None,
        "env": env,
    }
    size, modes = SIZES[args.size], TRL_GC_MODES[args.trl_gradient_checkpointing]
    L = (size.get("min_completion_length", 0), size["max_completion_length"])  # (min, max) new tokens
    with tempfile.TemporaryDirectory(prefix="grpo_step_cpu-") as work:
        model_dir = str(Path(work) / "model")
        build_model(model_dir, size)
        # Progress/log lines of either trainer go to stderr: stdout carries only the JSON.
        with contextlib.redirect_stdout(sys.stderr):
            if args.only is None and args.schedule == "interleaved":
                for gc in modes:  # one pass per TRL setting, each against a fresh rlreason side
                    sfx = GC_SUFFIX[gc]
                    seed_all()
                    sides = {"rlreason" + sfx: RlreasonSteps(model_dir, work, args.steps, lora=args.lora,
                                                             lengths=L, tag=sfx)}
                    if args.bf16_rollouts:  # the same training, sampling from a bf16 copy
                        sides["rlreason_bf16_rollouts" + sfx] = RlreasonSteps(
                            model_dir, work, args.steps, "bfloat16", lora=args.lora, lengths=L, tag=sfx)
                    step_all = lambda sides=sides: [s.step() for s in sides.values()]  # noqa: E731
                    result["trl" + sfx] = bench_trl(model_dir, work, args.steps, args.warmup, between_steps=step_all,
                                                    lora=args.lora, lengths=L, gradient_checkpointing=gc)
                    for name, side in sides.items():
                        result[name] = side.summary(args.warmup)
            else:
                if args.only in (None, "rlreason"):
                    result["rlreason"] = bench_rlreason(model_dir, work, args.steps, args.warmup, lora=args.lora,
                                                        lengths=L)
                    if args.bf16_rollouts:
                        result["rlreason_bf16_rollouts"] = bench_rlreason(
                            model_dir, work, args.steps, args.warmup, rollout_dtype="bfloat16", lora=args.lora,
                            lengths=L)
                if args.only in (None, "trl"):
                    for gc in modes:
                        result["trl" + GC_SUFFIX[gc]] = bench_trl(model_dir, work, args.steps, args.warmup,
                                                                  lora=args.lora, lengths=L, gradient_checkpointing=gc)
    env["loadavg_end"] = list(os.getloadavg())
    for sfx in GC_SUFFIX.values():
        r, t = result.get("rlreason" + sfx) or result.get("rlreason"), result.get("trl" + sfx)
        if not (r and t and r["median_step_s"] and t["median_step_s"]):
            continue
        result["ratio" + sfx] = r["median_step_s"] / t["median_step_s"]
        if args.schedule == "interleaved" and len(r["step_times_s"]) == len(t["step_times_s"]):
            # step i of each ran back to back: their ratio cancels load that changed slowly
            pairs = [a / b for a, b in zip(r["step_times_s"], t["step_times_s"])][args.warmup:]
            result["paired_step_ratio_median" + sfx] = statistics.median(pairs)
        b = result.get("rlreason_bf16_rollouts" + sfx)
        if b and b["median_step_s"]:  # reported beside the same-precision ratio, not instead of it
            result["ratio_bf16_rollouts" + sfx] = b["median_step_s"] / t["median_step_s"]
    # the target is against the tuned peer where it was timed, else against TRL's defaults
    tuned = result.get("ratio" + GC_SUFFIX[False], result.get("ratio"))
    result["meets_target"] = None if tuned is None else tuned <= TARGET_RATIO
    text = json.dumps(result, indent=2)
    if args.out:
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
