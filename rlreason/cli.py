"""`rlreason train|config`: each subcommand a thin call into the package.

`rlreason --help` and each subcommand's `--help` are the user's manual.
"""
from __future__ import annotations

import argparse
import os
import sys


def _train(args: argparse.Namespace) -> int:
    from .config import load_config
    from .trainer import train

    cfg = load_config(args.recipe, args.overrides)
    train(cfg)
    return 0


def _config(args: argparse.Namespace) -> int:
    from .config import dump_config, load_config, reference

    if args.reference:
        print("| key | type | default | description |\n|---|---|---|---|")
        print("\n".join(reference()))
        return 0
    cfg = load_config(args.recipe, args.overrides)
    dump_config(cfg, "/dev/stdout")
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="rlreason",
        description="Reinforcement fine-tuning of LLMs on reasoning tasks with verifiable "
        "rewards (GRPO, Dr. GRPO, DAPO, GSPO).",
    )
    sub = p.add_subparsers(dest="command", required=True)
    t = sub.add_parser(
        "train", help="run a recipe (GRPO family)",
        description="Train with a recipe YAML. Any field can be overridden as "
        "section.key=value, e.g. `rlreason train recipes/quickstart.yaml algo.beta=0.04 "
        "train.max_steps=20`. Resume with train.resume_from=latest.",
    )
    t.add_argument("recipe", help="recipe YAML (see recipes/)")
    t.add_argument("overrides", nargs="*", help="dotted overrides key=value")
    t.set_defaults(func=_train)
    c = sub.add_parser("config", help="print a resolved recipe, or the field reference",
                       description="Print the recipe with every default filled in.")
    c.add_argument("recipe", nargs="?", help="recipe YAML (default: built-in defaults)")
    c.add_argument("overrides", nargs="*", help="dotted overrides key=value")
    c.add_argument("--reference", action="store_true",
                   help="print every config field as a markdown table")
    c.set_defaults(func=_config)
    return p


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    args = build_parser().parse_args(argv)
    from .config import ConfigError

    try:
        return args.func(args)
    except (ConfigError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except ValueError as e:
        # data, reward and model errors carry the field/file to fix in their message
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
