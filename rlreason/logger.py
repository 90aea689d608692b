"""Run metrics: one JSON object per step in metrics.jsonl, a live progress line, a plot.

metrics.jsonl is the record a plot or a comparison is drawn from; the progress line is for
the person watching (step, reward, KL, tokens/s, ETA). On a terminal the line is redrawn
in place; in a log file (CI, slurm) a line is printed every `log_every` steps.
"""
from __future__ import annotations

import json
import math
import sys
import time
from pathlib import Path
from typing import Any


def _fmt_duration(seconds: float) -> str:
    seconds = int(max(0, seconds))
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m:02d}:{s:02d}"


def _clean(v: Any) -> Any:
    if isinstance(v, float) and not math.isfinite(v):
        return None
    return v


class MetricsLogger:
    def __init__(self, output_dir: str | Path, max_steps: int, *, start_step: int = 0,
                 log_every: int = 1, enabled: bool = True, stream=None, sink=None):
        self.path = Path(output_dir) / "metrics.jsonl"
        self.max_steps = max_steps
        self.start_step = start_step
        self.log_every = log_every
        self.enabled = enabled
        self.stream = stream or sys.stdout
        self.tty = hasattr(self.stream, "isatty") and self.stream.isatty()
        self.t0 = time.perf_counter()
        self.sink = sink  # also gets every row (experiment trackers: tracking.py)
        if enabled:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._truncate_after(start_step)

    def _truncate_after(self, step: int) -> None:
        """On resume, drop rows a stopped run wrote past its last checkpoint."""
        if not self.path.exists():
            return
        if step == 0:
            self.path.unlink()
            return
        rows = [r for r in read_metrics(self.path) if r.get("step", 0) <= step]
        self.path.write_text("".join(json.dumps(r) + "\n" for r in rows))

    def log(self, row: dict[str, Any]) -> None:
        if not self.enabled:
            return
        with self.path.open("a") as f:
            f.write(json.dumps({k: _clean(v) for k, v in row.items()}) + "\n")
        if self.sink is not None:
            self.sink(row)
        if "reward" in row or "loss" in row:
            self._progress(row)

    def _progress(self, row: dict[str, Any]) -> None:
        step = row["step"]
        done = step - self.start_step
        elapsed = time.perf_counter() - self.t0
        eta = elapsed / max(done, 1) * (self.max_steps - step)
        kl = row.get("kl")
        parts = [f"step {step}/{self.max_steps}"]
        if row.get("reward") is not None:
            parts.append(f"reward {row['reward']:.3f}")
        if "kl" in row:
            parts.append(f"kl {kl:.4f}" if kl is not None else "kl -")
        parts += [
            f"loss {row.get('loss', 0.0):+.4f}",
            f"{row.get('tokens_per_s', 0.0):,.0f} tok/s",
            f"{row.get('step_time_s', 0.0):.2f} s/step",
            f"ETA {_fmt_duration(eta)}",
        ]
        acc = row.get("eval/accuracy")
        if acc is not None:
            parts.append(f"eval acc {acc:.3f}")
        line = " | ".join(parts)
        if self.tty:
            end = "\n" if step >= self.max_steps else ""
            self.stream.write("\r\033[K" + line + end)
        elif step % self.log_every == 0 or step >= self.max_steps or "eval/accuracy" in row:
            self.stream.write(line + "\n")
        self.stream.flush()

    def message(self, text: str) -> None:
        if self.enabled:
            if self.tty:
                self.stream.write("\r\033[K")
            self.stream.write(text + "\n")
            self.stream.flush()


def read_metrics(path: str | Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]


def plot_rewards(metrics_path: str | Path, out_png: str | Path) -> Path | None:
    """Reward per step (and its moving average) with held-out accuracy, as a PNG."""
    try:  # lazily: matplotlib is heavy and only draws this plot (none when it is missing)
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    rows = read_metrics(metrics_path)
    train = [r for r in rows if r.get("reward") is not None]
    evals = [r for r in rows if r.get("eval/accuracy") is not None]
    fig, ax = plt.subplots(figsize=(7, 4))
    if train:
        xs = [r["step"] for r in train]
        ys = [r["reward"] for r in train]
        ax.plot(xs, ys, alpha=0.35, label="reward (train batch)")
        w = max(1, len(ys) // 10)
        avg = [sum(ys[max(0, i - w + 1) : i + 1]) / len(ys[max(0, i - w + 1) : i + 1])
               for i in range(len(ys))]
        ax.plot(xs, avg, label=f"reward, mean of {w}")
    if evals:
        ax.plot([r["step"] for r in evals], [r["eval/accuracy"] for r in evals], "o-",
                label="held-out accuracy")
    ax.set_xlabel("step")
    ax.set_ylabel("reward / accuracy")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(out_png, dpi=100)
    plt.close(fig)
    return Path(out_png)
