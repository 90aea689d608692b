"""What an evaluation leaves on disk, and the tables people read.

`DIR/summary.json` is the machine-readable record (metrics, by-group metrics, sampling
settings, grader errors, timing, the resolved configuration); `DIR/samples.jsonl` holds
every problem's prompt, gold answer, completions, extracted answers and correctness, so a
surprising number can be traced to the samples behind it (and the file can be rescored:
its rows are a valid `--completions` file); `DIR/results.md` is the table printed at the
end. `compare_markdown` puts several runs' summaries side by side, one column per run.

Metrics are shown as percentages with one decimal, the convention of papers and
leaderboards; summary.json keeps the exact fractions.
"""
from __future__ import annotations

import json
import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

__all__ = [
    "RESULTS_FILE",
    "SAMPLES_FILE",
    "SUMMARY_FILE",
    "compare_markdown",
    "load_summary",
    "results_markdown",
    "write_outputs",
]

SUMMARY_FILE = "summary.json"
SAMPLES_FILE = "samples.jsonl"
RESULTS_FILE = "results.md"

_METRIC_RE = re.compile(r"^(pass|maj)@(\d+)$")


def _pct(value: Any) -> str:
    return f"{100 * value:.1f}" if isinstance(value, (int, float)) else ""


def _metric_order(name: str) -> tuple[int, int, str]:
    """pass@1, pass@2, ..., maj@1, ..., then anything else alphabetically."""
    m = _METRIC_RE.match(name)
    if m:
        return (0 if m.group(1) == "pass" else 1, int(m.group(2)), "")
    return (2, 0, name)


def _label(summary: dict[str, Any]) -> str:
    """Who produced the completions: the model (and adapter), or the completions file."""
    if summary.get("model"):
        adapter = summary.get("adapter")
        return f"{summary['model']} + {adapter}" if adapter else str(summary["model"])
    return f"completions {summary.get('completions')}"


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def write_outputs(out_dir: str | Path, summary: dict[str, Any], records: Sequence[dict[str, Any]]) -> dict[str, Path]:
    """Write summary.json, samples.jsonl and results.md into `out_dir`; return their paths."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"summary": out / SUMMARY_FILE, "samples": out / SAMPLES_FILE, "results": out / RESULTS_FILE}
    _write_atomic(paths["samples"], "".join(json.dumps(r, ensure_ascii=False, default=str) + "\n" for r in records))
    _write_atomic(paths["results"], results_markdown(summary))
    # summary last: its presence means the run finished and the other files are complete
    _write_atomic(paths["summary"], json.dumps(summary, indent=2, ensure_ascii=False, default=str) + "\n")
    return paths


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "| " + " | ".join("---" for _ in header) + " |"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return lines


def results_markdown(summary: dict[str, Any]) -> str:
    """The run's headline table (every metric) and one table per grouping field."""
    metrics = summary.get("metrics", {})
    n = summary.get("n")
    sampling = summary.get("sampling") or {}
    settings = f"{summary.get('n_problems')} problems x {n} sample{'' if n == 1 else 's'}"
    if sampling:
        settings += f", temperature {sampling.get('temperature')}, top_p {sampling.get('top_p')}, " \
                    f"max_new_tokens {sampling.get('max_new_tokens')}"
    lines = [f"## {summary.get('benchmark')}: {_label(summary)}", "",
             f"{settings}; grader {summary.get('grader')}, {summary.get('grader_errors', 0)} grader errors", ""]
    lines += _table(["metric", "%"], [[k, _pct(metrics[k])] for k in sorted(metrics, key=_metric_order)])
    short = [k for k in ("pass@1", f"pass@{n}", f"maj@{n}") if k in metrics]
    short = list(dict.fromkeys(short))
    for fld, groups in (summary.get("by_group") or {}).items():
        rows = [[value, str(m.get("n_problems", "")), *(_pct(m.get(k)) for k in short)] for value, m in groups.items()]
        lines += ["", f"### by {fld}", ""]
        lines += _table([fld, "problems", *(f"{k} %" for k in short)], rows)
    return "\n".join(lines) + "\n"


def load_summary(path: str | Path) -> dict[str, Any]:
    """A run's summary from its folder (or the summary.json itself); ValueError naming the file."""
    p = Path(path)
    file = p / SUMMARY_FILE if p.is_dir() else p
    if not file.is_file():
        raise ValueError(f"{file}: no such file; expected an `rlreason eval` output folder holding {SUMMARY_FILE}")
    try:
        data = json.loads(file.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise ValueError(f"{file}: not valid JSON ({e.msg} at line {e.lineno})") from None
    if not isinstance(data, dict) or not isinstance(data.get("metrics"), dict):
        raise ValueError(f"{file}: not an `rlreason eval` summary (no 'metrics' object)")
    return data


def compare_markdown(runs: Sequence[tuple[str, dict[str, Any]]]) -> str:
    """One table: a row per metric (and the settings that make runs comparable), a column per run."""
    names = [name for name, _ in runs]
    summaries = [s for _, s in runs]
    metric_names = sorted({k for s in summaries for k in s["metrics"]}, key=_metric_order)

    def info(key: str, fmt=str) -> list[str]:
        return [fmt(s.get(key)) if s.get(key) is not None else "" for s in summaries]

    rows = [
        ["benchmark", *info("benchmark")],
        ["model", *[_label(s) for s in summaries]],
        ["problems", *info("n_problems")],
        ["samples / problem", *info("n")],
        ["temperature", *[str((s.get("sampling") or {}).get("temperature", "")) for s in summaries]],
        ["grader errors", *info("grader_errors")],
    ]
    rows += [[f"{k} %", *[_pct(s["metrics"].get(k)) for s in summaries]] for k in metric_names]
    return "\n".join(_table(["", *names], rows)) + "\n"
