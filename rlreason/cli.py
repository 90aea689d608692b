"""`rlreason train|config|eval`: each subcommand a thin call into the package.

`rlreason --help` and each subcommand's `--help` are the user's manual.
`rlreason eval compare DIR...` is spelled as a sub-action of eval; argparse cannot mix an
optional sub-action with eval's own flags, so `main` routes it to its own parser.
"""
from __future__ import annotations

import argparse
import json
import os
import sys

# The package's own modules are imported inside the functions below, once a command runs, and only
# the ones that command needs: `rlreason --help` and the light commands (config, plan) stay fast.
# Measured on a 2-core CPU machine: `python -c "import rlreason.cli"` 0.23 s,
# `python -c "import rlreason.trainer"` 13 s.


def _train(args: argparse.Namespace) -> int:
    from .config import load_config
    from .trainer import train

    cfg = load_config(args.recipe, args.overrides)
    train(cfg)
    return 0


def _sft(args: argparse.Namespace) -> int:
    from .config import load_config
    from .sft import train_sft

    train_sft(load_config(args.recipe, args.overrides))
    return 0


def _past(args: argparse.Namespace) -> int:
    from .config import load_config
    from .past import run_past

    run_past(load_config(args.recipe, args.overrides))
    return 0


def _plan(args: argparse.Namespace) -> int:
    from .config import load_config
    from .plan import estimate, format_plan

    strategy, gpus = args.strategy or "ddp", args.gpus or 1
    if args.accelerate_config:  # the launch config's strategy and process count, unless given
        from .plan import launch_layout

        launched, procs = launch_layout(args.accelerate_config)
        strategy, gpus = args.strategy or launched, args.gpus or procs
    p = estimate(load_config(args.recipe, args.overrides), gpus, args.gpu_memory, strategy)
    print(format_plan(p))
    return 0 if p["fits"] else 1


def _config(args: argparse.Namespace) -> int:
    from .config import dump_config, load_config, reference

    if args.reference:
        print("| key | type | default | description |\n|---|---|---|---|")
        print("\n".join(reference()))
        return 0
    cfg = load_config(args.recipe, args.overrides)
    dump_config(cfg, "/dev/stdout")
    return 0


def _eval(args: argparse.Namespace) -> int:
    from .evaluation.command import eval_command

    return eval_command(args)


def _eval_compare(args: argparse.Namespace) -> int:
    from .evaluation.command import compare_command

    return compare_command(args)


EVAL_EPILOG = """\
examples:
  rlreason eval --model Qwen/Qwen2.5-0.5B-Instruct --benchmark math500 --n 8 --output runs/eval1
  rlreason eval --model runs/lora/final --benchmark gsm8k --limit 200        # LoRA adapter folder
  rlreason eval --benchmark math500 --completions other_system.jsonl          # grade without a model
  rlreason eval --benchmark my.jsonl --problem-key question --answer-key answer --model ...
  rlreason eval compare runs/eval1 runs/eval2                                 # side-by-side table

pass@k (unbiased estimator) and maj@k are reported for k = 1..n when n <= 8, else powers
of two below n plus n. Outputs: DIR/summary.json, DIR/samples.jsonl, DIR/results.md."""


def _add_eval_arguments(e: argparse.ArgumentParser) -> None:
    src = e.add_argument_group("what to evaluate")
    src.add_argument("--model", help="hub id, model folder, or training checkpoint (checkpoints/step_N[/model], "
                     "final); a LoRA adapter folder is detected and applied to its base model")
    src.add_argument("--adapter", help="LoRA adapter folder to apply to --model")
    src.add_argument("--skill", action="append", default=[], metavar="VECTOR",
                     help="skill vector folder added to the weights in memory (repeatable)")
    src.add_argument("--skill-scale", action="append", type=float, default=[], metavar="S",
                     help="scale of each --skill, in order (default 1.0)")
    src.add_argument("--base-model", help="base model for an adapter (default: adapter_config.json's "
                     "base_model_name_or_path)")
    src.add_argument("--tokenizer", help="tokenizer id/folder (default: the checkpoint's, else the base model's)")
    src.add_argument("--completions", help="grade this JSONL of {\"id\": ..., \"completions\": [...]} rows "
                     "instead of sampling (id: the benchmark's id, or a 0-based row index)")
    b = e.add_argument_group("benchmark")
    b.add_argument("--benchmark", required=True, help="built-in name (gsm8k, math500), a suite YAML, or a "
                   "data file (.jsonl/.parquet) with --problem-key/--answer-key")
    b.add_argument("--problem-key", help="data file: field holding the problem (default: prompt)")
    b.add_argument("--answer-key", help="data file: field holding the answer (default: answer)")
    b.add_argument("--id-key", help="data file: field holding a unique id (default: <file stem>-<index>)")
    b.add_argument("--answer-extractor", choices=["none", "gsm8k", "boxed"],
                   help="data file: how to cut the final answer out of the answer field (default: none)")
    b.add_argument("--group-by", help="comma-separated fields to break metrics down by (overrides the suite's)")
    b.add_argument("--grader", help="math (math-verify), exact_match, or module:function (default: the suite's)")
    b.add_argument("--grader-timeout", type=float, help="seconds per grading call (default: the suite's)")
    b.add_argument("--limit", type=int, help="evaluate the first N problems only")
    pr = e.add_argument_group("prompt")
    pr.add_argument("--template", choices=["auto", "chat", "plain"], help="default: the suite's (auto)")
    pr.add_argument("--system-prompt", help="default: the suite's")
    pr.add_argument("--plain-template", help="prompt format for template=plain, with {prompt} and {system}")
    s = e.add_argument_group("sampling")
    s.add_argument("--n", type=int, default=1, help="completions per problem (default: 1)")
    s.add_argument("--temperature", type=float, default=0.6, help="0 = greedy (default: 0.6)")
    s.add_argument("--top-p", type=float, default=0.95, help="default: 0.95")
    s.add_argument("--max-new-tokens", type=int, default=2048, help="default: 2048")
    s.add_argument("--seed", type=int, default=0, help="sampling seed (default: 0)")
    s.add_argument("--stop", nargs="*", default=[], metavar="STRING",
                   help="stop strings: a completion ends once its text contains one")
    s.add_argument("--batch-size", type=int, default=64, help="sequences decoded together (default: 64)")
    s.add_argument("--env", default=None, metavar="NAME",
                   help="sample multi-turn episodes in an environment (tools, or module:Class), as env.name")
    s.add_argument("--env-kwargs", default="{}", metavar="JSON",
                   help="the environment's settings, as env.kwargs, e.g. "
                        '\'{"tools": ["calculator"], "format": "tags"}\'')
    s.add_argument("--max-turns", type=int, default=4, help="with --env: model turns per episode (default: 4)")
    s.add_argument("--max-total-tokens", type=int, default=512,
                   help="with --env: tokens after the prompt per episode (default: 512)")
    s.add_argument("--backend", choices=["hf", "vllm"], default="hf", help="generation engine (default: hf)")
    s.add_argument("--dtype", choices=["auto", "float32", "bfloat16", "float16"], default="auto",
                   help="weights dtype (default: auto, the checkpoint's)")
    o = e.add_argument_group("output")
    o.add_argument("--output", help="output folder (default: runs/eval/<benchmark>-<model>)")
    o.add_argument("--quiet", action="store_true", help="no progress bar / progress lines")


def build_eval_compare_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="rlreason eval compare",
        description="Print one markdown table of several `rlreason eval` runs: a row per metric, a column per run.",
    )
    p.add_argument("runs", nargs="+", help="output folders of `rlreason eval` (each holding summary.json)")
    p.add_argument("--output", help="also write the table to this file")
    p.set_defaults(func=_eval_compare)
    return p


def _skill(args: argparse.Namespace) -> int:
    from . import skills

    if args.action == "extract":
        m = skills.extract(args.base, args.tuned, args.out, source_recipe=args.recipe)
        print(f"wrote {args.out}: {m['kind']} vector over {len(m['tensors'])} tensors")
    elif args.action == "apply":
        skills.apply(args.model, args.vector, args.out, scale=args.scale, modules=args.modules,
                     base_model=args.base_model)
        print(f"wrote {args.out}: {args.model} + {args.scale} x {args.vector}")
    elif args.action == "merge-adapter":
        skills.merge_adapter(args.adapter, args.out, base=args.base_model)
        print(f"wrote {args.out}: {args.adapter} merged into its base")
    elif args.action == "merge":
        m = skills.merge(args.vectors, args.out, weights=args.weights, method=args.method,
                         density=args.density)
        print(f"wrote {args.out}: {args.method} of {len(args.vectors)} vectors")
    else:
        print(json.dumps(skills.inspect(args.vector, args.other), indent=1))
    return 0


def _serve(args) -> int:
    from .serve import serve

    serve(args)
    return 0


def _recipe_command(sub, name: str, func, help: str, description: str) -> argparse.ArgumentParser:
    """A subcommand that takes a recipe YAML and dotted overrides."""
    p = sub.add_parser(name, help=help, description=description)
    p.add_argument("recipe", help="recipe YAML (see recipes/)")
    p.add_argument("overrides", nargs="*", help="dotted overrides key=value")
    p.set_defaults(func=func)
    return p


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="rlreason",
        description="Reinforcement fine-tuning of LLMs on reasoning tasks with verifiable "
        "rewards (GRPO, Dr. GRPO, DAPO, GSPO).",
    )
    p.add_argument("--traceback", action="store_true",
                   help="on an error (a reward that raises, a bad config, ...) show the full Python "
                   "traceback instead of a one-line message; also RLREASON_TRACEBACK=1")
    sub = p.add_subparsers(dest="command", required=True)
    _recipe_command(
        sub, "train", _train, "run a recipe (GRPO family)",
        "Train with a recipe YAML. Any field can be overridden as section.key=value, e.g. "
        "`rlreason train recipes/quickstart.yaml algo.beta=0.04 train.max_steps=20`. "
        "Resume with train.resume_from=latest.")
    _recipe_command(
        sub, "sft", _sft, "supervised fine-tuning: cross-entropy or one-token rollout (OTR)",
        "Supervised training on the recipe's (prompt, solution) pairs; sft.loss=sft "
        "(cross-entropy) or sft.loss=otr (one-token rollout, arXiv 2509.26313).")
    _recipe_command(
        sub, "past", _past, "the PaST pipeline: source SFT + RL -> skill vector -> target SFT + vector",
        "Runs the recipe's `past` block end to end (see recipes/past_synthetic.yaml).")
    pl = _recipe_command(sub, "plan", _plan, "estimate per-GPU memory of a recipe; warn if it will not fit",
                         "Weights, gradients, AdamW state, activations and the colocated vLLM engine's "
                         "share per GPU; exit 1 when it does not fit.")
    pl.add_argument("--gpus", type=int, default=None, help="GPUs in all (default: 1, or the launch config's)")
    pl.add_argument("--gpu-memory", type=float, default=80.0, help="GiB per GPU")
    pl.add_argument("--strategy", choices=["ddp", "zero2", "zero3", "fsdp2"], default=None,
                    help="default: ddp, or the launch config's")
    pl.add_argument("--accelerate-config", help="an accelerate launch config (configs/accelerate/): "
                    "its strategy and num_processes")
    k = sub.add_parser("skill", help="skill vectors (PaST): extract, apply, merge, merge-adapter, inspect",
                       description="Weight deltas of RL training, carried to other models.")
    ks = k.add_subparsers(dest="action", required=True)
    x = ks.add_parser("extract", help="write the vector TUNED - BASE")
    x.add_argument("--base", required=True, help="model folder RL started from")
    x.add_argument("--tuned", required=True, help="model folder after RL, or a LoRA adapter folder")
    x.add_argument("--out", required=True)
    x.add_argument("--recipe", help="recipe that produced --tuned (recorded in the manifest)")
    a = ks.add_parser("apply", help="write MODEL + SCALE x VECTOR (loads with from_pretrained)")
    a.add_argument("--model", required=True, help="model folder, or a LoRA adapter folder (merged "
                   "into its base first)")
    a.add_argument("--vector", required=True)
    a.add_argument("--out", required=True)
    a.add_argument("--scale", type=float, default=1.0)
    a.add_argument("--modules", nargs="*", help="only tensors whose names contain one of these")
    a.add_argument("--base-model", help="base of an adapter --model (default: adapter_config.json's "
                   "base_model_name_or_path)")
    ma = ks.add_parser("merge-adapter", help="write a LoRA adapter merged into its base as a full "
                       "model folder (DoRA and other adapters extract refuses)")
    ma.add_argument("--adapter", required=True, help="peft adapter folder")
    ma.add_argument("--out", required=True)
    ma.add_argument("--base-model", help="default: adapter_config.json's base_model_name_or_path")
    mg = ks.add_parser("merge", help="weighted sum (or TIES) of vectors")
    mg.add_argument("vectors", nargs="+")
    mg.add_argument("--weights", nargs="*", type=float)
    mg.add_argument("--method", choices=["sum", "ties"], default="sum")
    mg.add_argument("--density", type=float, default=0.2, help="TIES: fraction of entries kept")
    mg.add_argument("--out", required=True)
    i = ks.add_parser("inspect", help="norms per layer; cosine to a second vector")
    i.add_argument("vector")
    i.add_argument("other", nargs="?")
    k.set_defaults(func=_skill)
    sv = sub.add_parser(
        "serve", help="server mode: a rollout engine on its own GPUs for trainers elsewhere",
        description="Serve generation over HTTP for trainers with rollout.backend=server; they push "
        "weights (or a LoRA adapter) after every step over NCCL (GPUs) or gloo (CPUs). The engine "
        "starts from --model; the trainer's first push replaces its weights.")
    sv.add_argument("--model", required=True, help="hub id or local folder (same architecture as the policy)")
    sv.add_argument("--backend", choices=["vllm", "hf"], default="vllm")
    sv.add_argument("--host", default="127.0.0.1",
                    help="address to bind (default: this machine only); any other needs an API key")
    sv.add_argument("--port", type=int, default=8000)
    sv.add_argument("--api-key", default=None,
                    help="require `Authorization: Bearer KEY` on every endpoint but GET /health "
                    "(default: env RLREASON_API_KEY; prefer it, argv is visible to other users)")
    sv.add_argument("--max-request-mb", type=float, default=8.0,
                    help="larger request bodies get HTTP 413 unread")
    sv.add_argument("--request-timeout-s", type=float, default=30.0,
                    help="drop a connection whose socket stalls this long mid-request")
    sv.add_argument("--transfer-allow", action="append", default=[], metavar="HOST",
                    help="a host /init_transfer may dial besides the caller's own address (repeatable)")
    sv.add_argument("--dtype", default="auto", help="weight dtype: auto, bfloat16, float32")
    sv.add_argument("--max-model-len", type=int, default=4096)
    sv.add_argument("--gpu-memory-utilization", type=float, default=0.9)
    sv.add_argument("--tensor-parallel-size", type=int, default=1)
    sv.add_argument("--enable-lora", action="store_true", help="serve the trainer's LoRA adapter (vllm)")
    sv.add_argument("--max-lora-rank", type=int, default=16)
    sv.add_argument("--seed", type=int, default=0)
    sv.set_defaults(func=_serve)
    c = sub.add_parser("config", help="print a resolved recipe, or the field reference",
                       description="Print the recipe with every default filled in.")
    c.add_argument("recipe", nargs="?", help="recipe YAML (default: built-in defaults)")
    c.add_argument("overrides", nargs="*", help="dotted overrides key=value")
    c.add_argument("--reference", action="store_true",
                   help="print every config field as a markdown table")
    c.set_defaults(func=_config)
    e = sub.add_parser(
        "eval", help="evaluate a model (or graded completions) on a benchmark; `eval compare` runs",
        description="Sample n completions per problem, grade them (math-verify), and report pass@k, maj@k "
        "and per-group metrics. `rlreason eval compare DIR...` compares finished runs.",
        epilog=EVAL_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _add_eval_arguments(e)
    e.set_defaults(func=_eval)
    return p


def _is_reward_error(e: BaseException) -> bool:
    # a RewardError was raised by rlreason.rewards.registry, so it is imported by then; looked
    # up here so that commands without rewards do not pay for importing math-verify
    registry = sys.modules.get("rlreason.rewards.registry")
    return registry is not None and isinstance(e, registry.RewardError)


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    argv = sys.argv[1:] if argv is None else list(argv)
    lead = 1 if argv[:1] == ["--traceback"] else 0
    if argv[lead : lead + 2] == ["eval", "compare"]:
        args = build_eval_compare_parser().parse_args(argv[lead + 2 :])
        args.traceback = bool(lead)
    else:
        args = build_parser().parse_args(argv)
    show_traceback = args.traceback or os.environ.get("RLREASON_TRACEBACK", "").lower() in ("1", "true", "yes")
    from transformers.utils import logging as hf_logging  # lazily: transformers is heavy; not for --help

    hf_logging.disable_progress_bar()  # per-save "Writing model shards" bars drown the progress line
    from .config import ConfigError

    try:
        return args.func(args)
    except (ConfigError, FileNotFoundError, ConnectionError) as e:  # SkillError, DataError: ValueErrors
        if show_traceback:
            raise
        print(f"error: {e}", file=sys.stderr)
        return 2
    except ValueError as e:
        # data, reward and model errors carry the field/file to fix in their message
        if show_traceback:
            raise
        print(f"error: {e}", file=sys.stderr)
        return 2
    except Exception as e:
        if show_traceback or not _is_reward_error(e):
            raise
        # one line: the reward, the sample and the cause are all in the message
        message = " ".join(str(e).splitlines())
        print(f"error: {message} (`rlreason --traceback ...` shows the traceback)", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
