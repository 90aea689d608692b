"""`rlreason eval`: metrics arithmetic, the grader on real benchmark solutions, model mode vs
rescoring, checkpoints with LoRA adapters, and the error messages users see."""
from __future__ import annotations

import importlib.util
import json
import math
import time
from pathlib import Path

import pytest
import yaml

from rlreason.cli import main
from rlreason.evaluation import (
    Grader,
    SuiteError,
    aggregate,
    default_ks,
    evaluate_problems,
    load_suite,
    load_suite_problems,
    maj_at_k,
    pass_at_k,
    score_completions,
)
from rlreason.evaluation.suites import builtin_suites
from rlreason.types import Problem, SamplingParams

REPO = Path(__file__).resolve().parents[1]
ADDITIONS = [(3, 4), (12, 7), (25, 30), (8, 9), (41, 2), (6, 60)]


@pytest.fixture(autouse=True, scope="module")
def _one_torch_thread():
    """Tiny models gain nothing from threads, and on a busy 2-core machine oversubscribed
    threads make a 0.1 s warm-start take 20 s."""
    import torch

    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


def _read_json(path: Path) -> dict:
    return json.loads(path.read_text(encoding="utf-8"))


def _read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def _write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


# --------------------------------------------------------------------------- metrics


def test_pass_at_k_matches_the_binomial_formula():
    # n=4, c=2: pass@2 = 1 - C(2,2)/C(4,2) = 1 - 1/6; pass@3 = 1 - C(2,3)/C(4,3) = 1 - 0/4
    assert pass_at_k(4, 2, 1) == pytest.approx(0.5)
    assert pass_at_k(4, 2, 2) == pytest.approx(5 / 6)
    assert pass_at_k(4, 2, 3) == 1.0
    # n=4, c=1: pass@2 = 1 - C(3,2)/C(4,2) = 1 - 3/6; pass@3 = 1 - C(3,3)/C(4,3) = 1 - 1/4
    assert pass_at_k(4, 1, 2) == pytest.approx(0.5)
    assert pass_at_k(4, 1, 3) == pytest.approx(0.75)
    assert pass_at_k(4, 0, 4) == 0.0
    for n, c, k in [(10, 3, 4), (64, 5, 16), (200, 17, 100)]:  # the product form equals the binomials
        assert pass_at_k(n, c, k) == pytest.approx(1 - math.comb(n - c, k) / math.comb(n, k))
    assert default_ks(4) == [1, 2, 3, 4]
    assert default_ks(12) == [1, 2, 4, 8, 12]
    assert default_ks(64) == [1, 2, 4, 8, 16, 32, 64]


def test_pass_and_maj_at_k_by_hand_through_the_grader():
    """Three problems, n=4, through the real grader (extraction + math-verify clustering).

    A (gold 2): answers 2, 3, 2.0, 3 -> correct 1010, c=2; votes: {2, 2.0} is one cluster.
      maj@1: 2 ok. maj@2: 2 vs 3 tie -> first (2) ok. maj@3: 2 wins 2-1 ok. maj@4: tie 2-2 -> 2 ok.
    B (gold 7): answers 5, 7, 7, 5 -> correct 0110, c=2.
      maj@1: 5 wrong. maj@2: tie -> 5 wrong. maj@3: 7 wins 2-1 ok. maj@4: tie -> 5 (first) wrong.
    C (gold 4): answers -, -, 4, - (no answer abstains) -> correct 0010, c=1.
      maj@1, maj@2: nobody votes -> wrong. maj@3, maj@4: 4 ok.
    pass@1 = (2/4 + 2/4 + 1/4)/3 = 5/12
    pass@2 = (5/6 + 5/6 + 1/2)/3 = 13/18      (c=2: 1 - 1/6; c=1: 1 - 3/6)
    pass@3 = (1 + 1 + 3/4)/3 = 11/12          (c=2: every 3-subset has a hit; c=1: 1 - 1/4)
    pass@4 = 1
    maj@1 = 1/3, maj@2 = 1/3, maj@3 = 3/3, maj@4 = 2/3
    """
    box = "The answer is \\boxed{{{}}}.".format
    problems = [Problem(id="A", prompt="a", answer="2"), Problem(id="B", prompt="b", answer="7"),
                Problem(id="C", prompt="c", answer="4")]
    completions = [[box("2"), box("3"), box("2.0"), box("3")],
                   [box("5"), box("7"), box("7"), box("5")],
                   ["no idea", "still no idea", box("4"), "gave up"]]
    result = score_completions(problems, completions, Grader("math"))
    assert result.ks == [1, 2, 3, 4]
    expected = {"pass@1": 5 / 12, "pass@2": 13 / 18, "pass@3": 11 / 12, "pass@4": 1.0,
                "maj@1": 1 / 3, "maj@2": 1 / 3, "maj@3": 1.0, "maj@4": 2 / 3}
    assert result.metrics == pytest.approx(expected)
    assert [r["correct"] for r in result.records] == [[True, False, True, False], [False, True, True, False],
                                                      [False, False, True, False]]
    assert result.records[0]["answers"] == ["2", "3", "2.0", "3"]
    assert result.records[2]["answers"][:2] == [None, None]
    assert result.grader_errors == 0
    # the pure functions agree with the pipeline
    assert maj_at_k([0, 1, 1, 0], [False, True, True, False], 4) is False
    assert aggregate([[True, False]], [[0, 1]], [1, 2]) == {"pass@1": 0.5, "pass@2": 1.0, "maj@1": 1.0, "maj@2": 1.0}


# --------------------------------------------------------------------------- the grader on real solutions


def _load_script():
    path = REPO / "evaluation" / "make_gold_completions.py"
    spec = importlib.util.spec_from_file_location("make_gold_completions", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def gold_runs(benchmarks_dir, tmp_path_factory):
    """Gold and shuffled gold solutions of both shipped suites, rescored through the CLI."""
    tmp = tmp_path_factory.mktemp("gold")
    script = _load_script()
    files = {"gsm8k": "gsm8k_test.jsonl", "math500": "math500.jsonl", "aime24": "aime24.jsonl",
             "amc23": "amc23.jsonl"}
    runs = {}
    for name, file in files.items():
        extra = ["--from-answers"] if name == "amc23" else []  # AMC ships answers, no solutions
        suite = yaml.safe_load(builtin_suites()[name].read_text(encoding="utf-8"))
        suite["data"]["source"] = str(benchmarks_dir / file)  # honour $RLREASON_BENCHMARKS_DIR
        suite_file = tmp / f"{name}.yaml"
        suite_file.write_text(yaml.safe_dump(suite), encoding="utf-8")
        for kind, flags in (("gold", []), ("shuffled", ["--shuffle"])):
            completions = tmp / f"{name}-{kind}.jsonl"
            assert script.main([str(suite_file), str(completions), *flags, *extra]) == 0
            out = tmp / f"{name}-{kind}"
            assert main(["eval", "--benchmark", str(suite_file), "--completions", str(completions),
                         "--output", str(out), "--quiet"]) == 0
            runs[name, kind] = out
    return runs


@pytest.mark.parametrize("name,n_problems", [("gsm8k", 1319), ("math500", 500), ("aime24", 30), ("amc23", 40)])
def test_gold_solutions_pass_and_shuffled_fail(gold_runs, name, n_problems):
    gold = _read_json(gold_runs[name, "gold"] / "summary.json")
    shuffled = _read_json(gold_runs[name, "shuffled"] / "summary.json")
    assert gold["n_problems"] == shuffled["n_problems"] == n_problems
    assert gold["metrics"]["pass@1"] >= 0.995, gold["metrics"]
    assert shuffled["metrics"]["pass@1"] <= 0.01, shuffled["metrics"]
    assert gold["grader_errors"] == shuffled["grader_errors"] == 0
    if name == "math500":
        assert set(gold["by_group"]) == {"subject", "level"}
        assert list(gold["by_group"]["level"]) == ["1", "2", "3", "4", "5"]
        assert sum(g["n_problems"] for g in gold["by_group"]["subject"].values()) == 500


def test_compare_prints_one_table_of_runs(gold_runs, capsys):
    a, b = gold_runs["math500", "gold"], gold_runs["math500", "shuffled"]
    assert main(["eval", "compare", str(a), str(b)]) == 0
    table = capsys.readouterr().out
    assert f"|  | {a.name} | {b.name} |" in table
    assert "| pass@1 % | 100.0 | 0.0 |" in table
    assert "| problems | 500 | 500 |" in table


# --------------------------------------------------------------------------- tiny model: model mode


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A tiny Llama briefly fitted to 6 additions (so samples are a mix of right and wrong),
    saved with its tokenizer, and a JSONL benchmark of those additions with a group field."""
    from rlreason.tiny import char_tokenizer, supervised_warmstart, tiny_llama

    tmp = tmp_path_factory.mktemp("tiny")
    tok = char_tokenizer()
    model = tiny_llama(tok, 2, 64, 128, 4, seed=0, max_positions=64)
    pairs = [(f"{a}+{b}=", str(a + b)) for a, b in ADDITIONS]
    supervised_warmstart(model, tok, pairs, steps=20, batch_size=6, lr=3e-3)
    model.save_pretrained(tmp / "model")
    tok.save_pretrained(tmp / "model")
    bench = _write_jsonl(tmp / "additions.jsonl", [
        {"question": p, "sum": s, "size": "small" if a + b < 20 else "large"}
        for (p, s), (a, b) in zip(pairs, ADDITIONS)])
    return {"dir": tmp, "model": tmp / "model", "bench": bench, "hf_model": model, "tokenizer": tok}


def _model_args(model: Path, bench: Path, out: Path, *extra: str) -> list[str]:
    return ["eval", "--model", str(model), "--benchmark", str(bench), "--problem-key", "question",
            "--answer-key", "sum", "--group-by", "size", "--n", "4", "--temperature", "1.0", "--top-p", "1.0",
            "--max-new-tokens", "6", "--dtype", "float32", "--output", str(out), "--quiet", *extra]


@pytest.fixture(scope="module")
def model_run(tiny):
    out = tiny["dir"] / "run-base"
    assert main(_model_args(tiny["model"], tiny["bench"], out)) == 0
    return out


def test_model_mode_writes_the_three_files(model_run, tiny):
    for name in ("summary.json", "samples.jsonl", "results.md"):
        assert (model_run / name).is_file(), name
    summary = _read_json(model_run / "summary.json")
    assert summary["n_problems"] == 6 and summary["n"] == 4 and summary["ks"] == [1, 2, 3, 4]
    assert summary["sampling"]["temperature"] == 1.0 and summary["sampling"]["max_new_tokens"] == 6
    assert summary["model"] == str(tiny["model"]) and summary["adapter"] is None
    assert 0 < summary["metrics"]["pass@1"] < 1, summary["metrics"]  # a mix, so the test has teeth
    assert summary["metrics"]["pass@4"] >= summary["metrics"]["pass@1"]
    assert set(summary["by_group"]["size"]) == {"small", "large"}
    assert summary["generation"]["mean_completion_tokens"] > 0
    assert summary["config"]["suite"]["fields"]["prompt_key"] == "question"
    rows = _read_jsonl(model_run / "samples.jsonl")
    assert [r["id"] for r in rows] == [f"additions-{i}" for i in range(6)]
    assert rows[0]["prompt"] == "3+4=" and rows[0]["gold"] == "7"
    assert all(len(r["completions"]) == len(r["answers"]) == len(r["correct"]) == 4 for r in rows)
    assert "pass@1" in (model_run / "results.md").read_text(encoding="utf-8")


def test_rescoring_the_same_completions_gives_the_same_summary(model_run, tiny, tmp_path):
    model_summary = _read_json(model_run / "summary.json")
    rows = _read_jsonl(model_run / "samples.jsonl")
    # ids as 0-based row indices (the benchmark file has no id field) ...
    by_index = _write_jsonl(tmp_path / "by_index.jsonl",
                            [{"id": i, "completions": r["completions"]} for i, r in enumerate(rows)])
    # ... and the samples.jsonl itself (string ids, extra keys ignored)
    for i, completions in enumerate([by_index, model_run / "samples.jsonl"]):
        out = tmp_path / f"rescored-{i}"
        assert main(["eval", "--benchmark", str(tiny["bench"]), "--problem-key", "question", "--answer-key", "sum",
                     "--group-by", "size", "--completions", str(completions), "--output", str(out), "--quiet"]) == 0
        rescored = _read_json(out / "summary.json")
        for key in ("metrics", "by_group", "n_problems", "n", "ks", "grader_errors"):
            assert rescored[key] == model_summary[key], key
        assert [r["correct"] for r in _read_jsonl(out / "samples.jsonl")] == [r["correct"] for r in rows]


def test_lora_adapter_folder_evaluates_through_model(tiny, model_run, tmp_path):
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(tiny["model"])  # records the base path in the adapter config
    peft_model = get_peft_model(base, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "down_proj"]))
    torch.manual_seed(1)
    with torch.no_grad():
        for name, p in peft_model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.5)  # B starts at zero: make the adapter change the samples
    adapter = tmp_path / "checkpoints" / "step_000004" / "model"
    peft_model.save_pretrained(adapter)  # no tokenizer saved: it must come from the base model
    out = tmp_path / "run-lora"
    assert main(_model_args(adapter, tiny["bench"], out)) == 0
    summary = _read_json(out / "summary.json")
    assert summary["adapter"] == str(adapter) and summary["base_model"] == str(tiny["model"])
    assert summary["tokenizer"] == str(tiny["model"])
    lora_rows, base_rows = _read_jsonl(out / "samples.jsonl"), _read_jsonl(model_run / "samples.jsonl")
    assert [r["completions"] for r in lora_rows] != [r["completions"] for r in base_rows]
    # the step folder (holding model/) works too, and --model BASE --adapter DIR is the same run
    out2 = tmp_path / "run-lora-2"
    assert main(_model_args(tiny["model"], tiny["bench"], out2, "--adapter", str(adapter.parent))) == 0
    assert [r["completions"] for r in _read_jsonl(out2 / "samples.jsonl")] == [r["completions"] for r in lora_rows]


def test_evaluate_problems_for_a_trainer_keeps_the_engine_rng(tiny):
    import torch

    from rlreason.rollout.hf import HFEngine

    tok = tiny["tokenizer"]
    engine = HFEngine(tiny["hf_model"], tok, batch_size=16, seed=5)
    problems = [Problem(id=str(i), prompt=f"{a}+{b}=", answer=str(a + b), metadata={"size": "x"})
                for i, (a, b) in enumerate(ADDITIONS[:3])]
    before = engine.rng_state().clone()
    result = evaluate_problems(engine, tok, problems, lambda p: tok(p.prompt, add_special_tokens=False)["input_ids"],
                               n=2, sampling=SamplingParams(temperature=1.0, max_tokens=4), grader=Grader("math"),
                               group_by=["size"], chunk_size=2)
    assert torch.equal(engine.rng_state(), before)
    assert result.n_problems == 3 and result.n == 2 and set(result.metrics) == {"pass@1", "pass@2", "maj@1", "maj@2"}
    assert result.by_group["size"]["x"]["n_problems"] == 3
    assert set(result.generation) >= {"mean_completion_tokens", "frac_truncated", "samples_per_s"}


# --------------------------------------------------------------------------- suites


def test_suite_relative_source_resolves_next_to_the_yaml(tiny, tmp_path, monkeypatch):
    (tmp_path / "suites").mkdir()
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "additions.jsonl").write_bytes(tiny["bench"].read_bytes())
    suite_file = tmp_path / "suites" / "adds.yaml"
    suite_file.write_text(yaml.safe_dump({
        "name": "adds", "data": {"source": "../data/additions.jsonl"},
        "fields": {"prompt_key": "question", "answer_key": "sum"}, "group_by": ["size"]}), encoding="utf-8")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)  # not the YAML's folder: the source still resolves next to the YAML
    problems = load_suite_problems(load_suite(suite_file))
    assert len(problems) == 6 and problems[0].metadata == {"size": "small"}
    suite_file.write_text(suite_file.read_text(encoding="utf-8").replace("additions.jsonl", "missing.jsonl"),
                          encoding="utf-8")
    with pytest.raises(ValueError,
                       match=r"no such file; looked at .*data/missing.jsonl \(relative to the suite's folder\)"):
        load_suite_problems(load_suite(suite_file))


def test_builtin_suites_load(benchmarks_dir):
    assert {"gsm8k", "math500", "aime24", "amc23"} <= set(builtin_suites())
    math500 = load_suite(builtin_suites()["math500"])
    assert math500.group_by == ["subject", "level"] and math500.grading.grader == "math"


# --------------------------------------------------------------------------- errors users see


def test_unknown_benchmark_lists_the_builtins(tmp_path, capsys):
    assert main(["eval", "--benchmark", "mmlu", "--completions", str(tmp_path / "x.jsonl")]) == 2
    err = capsys.readouterr().err
    assert "unknown benchmark 'mmlu'" in err and "gsm8k" in err and "math500" in err


def test_eval_on_an_empty_problems_file_is_an_error(tmp_path, capsys):
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    completions = _write_jsonl(tmp_path / "c.jsonl", [{"id": 0, "completions": ["1"]}])
    assert main(["eval", "--benchmark", str(empty), "--completions", str(completions), "--quiet",
                 "--output", str(tmp_path / "out")]) == 2
    assert "empty.jsonl: no problems in the file" in capsys.readouterr().err
    assert not (tmp_path / "out" / "summary.json").exists()


def test_suite_yaml_with_an_unknown_key_names_it(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\ndata: {source: x.jsonl}\nfields: {promt_key: question}\n", encoding="utf-8")
    with pytest.raises(SuiteError, match=r"unknown key 'fields\.promt_key'; did you mean prompt_key"):
        load_suite(bad)
    assert main(["eval", "--benchmark", str(bad), "--completions", str(tmp_path / "c.jsonl")]) == 2
    assert str(bad) in capsys.readouterr().err


def test_completions_with_an_unknown_id_name_file_and_line(tiny, tmp_path, capsys):
    bad = _write_jsonl(tmp_path / "c.jsonl", [{"id": "additions-0", "completions": ["7"]},
                                              {"id": "additions-99", "completions": ["1"]}])
    args = ["eval", "--benchmark", str(tiny["bench"]), "--problem-key", "question", "--answer-key", "sum",
            "--completions", str(bad), "--quiet", "--output", str(tmp_path / "out")]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert f"{bad} line 2" in err and "unknown id 'additions-99'" in err
    _write_jsonl(bad, [{"id": 6, "completions": ["7"]}])
    assert main(args) == 2
    assert f"{bad} line 1" in capsys.readouterr().err


def _raising_grader(completion: str, problem: Problem) -> float:
    if completion == "boom":
        raise ZeroDivisionError("grader bug")
    return 1.0 if completion.strip() == problem.answer else 0.0


def _slow_grader(completion: str, problem: Problem) -> float:
    time.sleep(2)
    return 1.0


def test_grader_failures_are_counted_and_never_abort(tiny, tmp_path):
    problems = [Problem(id="a", prompt="1+1=", answer="2"), Problem(id="b", prompt="2+2=", answer="4")]
    result = score_completions(problems, [["2", "boom"], ["boom", "4"]], Grader(_raising_grader))
    assert result.grader_errors == 2
    assert [r["correct"] for r in result.records] == [[True, False], [False, True]]
    assert "grader bug" in result.records[0]["grader_errors"][1]
    timed = score_completions(problems[:1], [["2"]], Grader(_slow_grader, timeout_s=0.1))
    assert timed.grader_errors == 1 and timed.metrics["pass@1"] == 0.0
    assert "timed out" in timed.records[0]["grader_errors"][0]
    # through the command line, with a module:function grader: counted in summary.json
    comps = _write_jsonl(tmp_path / "c.jsonl", [{"id": i, "completions": ["boom", str(a + b)]}
                                               for i, (a, b) in enumerate(ADDITIONS)])
    out = tmp_path / "out"
    assert main(["eval", "--benchmark", str(tiny["bench"]), "--problem-key", "question", "--answer-key", "sum",
                 "--completions", str(comps), "--grader", f"{__name__}:_raising_grader",
                 "--output", str(out), "--quiet"]) == 0
    summary = _read_json(out / "summary.json")
    assert summary["grader_errors"] == 6 and summary["metrics"]["pass@1"] == 0.5


@pytest.mark.skipif(importlib.util.find_spec("vllm") is not None, reason="vllm is installed")
def test_vllm_backend_without_vllm_says_what_to_install(tiny, tmp_path, capsys):
    assert main(_model_args(tiny["model"], tiny["bench"], tmp_path / "out", "--backend", "vllm")) == 2
    assert "pip install" in capsys.readouterr().err
