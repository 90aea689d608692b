"""Tests for rlreason.data: loaders, benchmarks, prompt templates."""

from __future__ import annotations

import json
import re
import string
import sys
import time

import pytest

from rlreason.data import (
    DataError,
    FieldMap,
    build_prompt,
    encode_prompts,
    extract_answer,
    load_problems,
)
from rlreason.data import benchmarks as bench
from rlreason.types import Problem

NUMBER = re.compile(r"^-?\d+(\.\d+)?$")


def write_jsonl(path, rows):
    """rows: dicts (dumped as JSON) or raw strings (written as is)."""
    with open(path, "w", encoding="utf-8") as f:
        f.writelines((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows)
    return path


# --------------------------------------------------------------------------- benchmarks


@pytest.mark.parametrize("split,rows", [("train", 7473), ("test", 1319)])
def test_gsm8k_benchmark(benchmarks_dir, split, rows):
    problems = bench.gsm8k(benchmarks_dir, split=split)
    assert len(problems) == rows
    assert len({p.id for p in problems}) == rows
    assert problems[0].id == f"gsm8k-{split}-0"
    assert problems[-1].id == f"gsm8k-{split}-{rows - 1}"
    for p in problems:
        assert NUMBER.match(p.answer), (
            p.id,
            p.answer,
        )  # no '####', no commas, no spaces
        assert p.prompt and p.messages is None
        # the oracle worked solution is kept whole and ends with its final answer
        assert p.solution and "####" in p.solution
        assert p.solution.rsplit("####", 1)[1].strip().replace(",", "") == p.answer


def test_gsm8k_first_test_row(benchmarks_dir):
    p = bench.gsm8k(benchmarks_dir / "gsm8k_test.jsonl")[0]  # a file path works too
    assert p.prompt.startswith("Janet\u2019s ducks lay 16 eggs per day.")
    assert p.answer == "18"
    assert p.solution.startswith("Janet sells 16 - 3 - 4")


def test_math500_benchmark(benchmarks_dir):
    problems = bench.math500(benchmarks_dir)
    assert len(problems) == 500
    assert len({p.id for p in problems}) == 500
    first = problems[0]
    assert first.id == "test/precalculus/807.json"
    assert first.answer == "\\left( 3, \\frac{\\pi}{2} \\right)"
    assert first.metadata == {"subject": "Precalculus", "level": 2}
    for p in problems:
        assert set(p.metadata) == {"subject", "level"}
        assert isinstance(p.metadata["subject"], str) and p.metadata["subject"]
        assert p.metadata["level"] in {1, 2, 3, 4, 5}
        assert p.prompt and p.answer and p.solution


def test_benchmarks_dir_env(benchmarks_dir, monkeypatch, tmp_path):
    monkeypatch.setenv("RLREASON_BENCHMARKS_DIR", str(benchmarks_dir))
    assert bench.benchmarks_dir() == benchmarks_dir
    assert len(bench.math500()) == 500  # path=None goes through benchmarks_dir()

    missing = tmp_path / "nowhere"
    monkeypatch.setenv("RLREASON_BENCHMARKS_DIR", str(missing))
    with pytest.raises(DataError) as e:
        bench.benchmarks_dir()
    msg = str(e.value)
    assert str(missing) in msg and "RLREASON_BENCHMARKS_DIR" in msg
    assert str(bench._default_dir()) in msg  # names the default place too


def test_benchmarks_dir_missing_default(monkeypatch, tmp_path):
    monkeypatch.delenv("RLREASON_BENCHMARKS_DIR", raising=False)
    monkeypatch.setattr(
        bench, "_default_dir", lambda: tmp_path / "no-shared" / "benchmarks"
    )
    with pytest.raises(DataError) as e:
        bench.benchmarks_dir()
    assert str(tmp_path / "no-shared" / "benchmarks") in str(e.value)
    assert "RLREASON_BENCHMARKS_DIR" in str(e.value)


# --------------------------------------------------------------------------- JSONL


def test_jsonl_basic(tmp_path):
    path = write_jsonl(
        tmp_path / "toy.jsonl",
        [
            {"prompt": "1+1?", "answer": 2, "extra": "x"},
            "",
            "   ",
            {"prompt": "2+2?", "answer": "4"},
            {"prompt": "3+3?", "answer": " 6 "},
        ],
    )
    problems = load_problems(str(path), FieldMap())
    assert [p.id for p in problems] == [
        "toy-0",
        "toy-1",
        "toy-2",
    ]  # blank lines are not rows
    assert [p.answer for p in problems] == ["2", "4", "6"]  # ints -> str, stripped
    assert problems[0].prompt == "1+1?"
    assert problems[0].solution is None and problems[0].metadata == {}

    assert [p.id for p in load_problems(str(path), FieldMap(), limit=2)] == [
        "toy-0",
        "toy-1",
    ]
    assert load_problems(str(path), FieldMap(), limit=0) == []


def test_jsonl_limit_stops_before_bad_rows(tmp_path):
    path = write_jsonl(
        tmp_path / "d.jsonl", [{"prompt": "a", "answer": "1"}, "{not json"]
    )
    assert len(load_problems(str(path), FieldMap(), limit=1)) == 1
    with pytest.raises(DataError):
        load_problems(str(path), FieldMap())


def test_jsonl_missing_field_names_file_line_and_field(tmp_path):
    path = write_jsonl(
        tmp_path / "broken.jsonl",
        [
            {"question": "a", "answer": "1"},
            {"question": "b", "answer": "2"},
            {"question": "c", "final": "3"},
        ],
    )
    with pytest.raises(DataError) as e:
        load_problems(str(path), FieldMap(prompt_key="question"))
    msg = str(e.value)
    assert "broken.jsonl" in msg
    assert "line 3" in msg
    assert "'answer'" in msg
    assert "final" in msg and "question" in msg  # the fields the row does have


def test_jsonl_empty_answer_is_called_empty_not_missing(tmp_path):
    path = write_jsonl(
        tmp_path / "e.jsonl",
        [{"prompt": "a", "answer": "1"}, {"prompt": "b", "answer": ""}],
    )
    with pytest.raises(DataError, match=r"e\.jsonl line 2: field 'answer' is empty") as e:
        load_problems(str(path), FieldMap())
    assert "missing" not in str(e.value)
    path = write_jsonl(tmp_path / "n.jsonl", [{"prompt": "b", "answer": None}])
    with pytest.raises(DataError, match=r"line 1: field 'answer' is empty"):
        load_problems(str(path), FieldMap())
    path = write_jsonl(tmp_path / "m.jsonl", [{"prompt": "b"}])
    with pytest.raises(DataError, match=r"line 1: missing required field 'answer'"):
        load_problems(str(path), FieldMap())


def test_empty_problems_file_is_an_error(tmp_path):
    path = tmp_path / "none.jsonl"
    path.write_text("\n\n")
    with pytest.raises(DataError, match=r"none\.jsonl: no problems in the file"):
        load_problems(str(path), FieldMap())


def test_jsonl_invalid_json_names_line(tmp_path):
    path = write_jsonl(
        tmp_path / "bad.jsonl",
        [
            {"prompt": "a", "answer": "1"},
            "",
            {"prompt": "b", "answer": "2"},
            '{"prompt": "c", "answer": ',
        ],
    )
    with pytest.raises(DataError) as e:
        load_problems(str(path), FieldMap())
    assert "bad.jsonl" in str(e.value)
    assert "line 4" in str(e.value)  # physical line number, blank lines counted
    assert "invalid JSON" in str(e.value)


def test_jsonl_row_not_an_object(tmp_path):
    path = write_jsonl(tmp_path / "list.jsonl", ["[1, 2]"])
    with pytest.raises(DataError, match=r"line 1.*expected an object"):
        load_problems(str(path), FieldMap())


def test_missing_file_names_path(tmp_path):
    path = tmp_path / "sub" / "absent.jsonl"
    with pytest.raises(DataError) as e:
        load_problems(str(path), FieldMap())
    assert str(path) in str(e.value)
    with pytest.raises(DataError, match="absent.parquet"):
        load_problems(str(tmp_path / "absent.parquet"), FieldMap())


def test_duplicate_id_names_both_rows(tmp_path):
    path = write_jsonl(
        tmp_path / "dup.jsonl",
        [
            {"id": "q1", "prompt": "a", "answer": "1"},
            {"id": "q2", "prompt": "b", "answer": "2"},
            {"id": "q1", "prompt": "c", "answer": "3"},
        ],
    )
    with pytest.raises(DataError) as e:
        load_problems(str(path), FieldMap(id_key="id"))
    msg = str(e.value)
    assert "'q1'" in msg and "line 1" in msg and "line 3" in msg and "duplicate" in msg


def test_id_key_int_ids_and_metadata(tmp_path):
    path = write_jsonl(
        tmp_path / "m.jsonl",
        [{"idx": 7, "prompt": "a", "answer": "1", "level": 3, "tags": ["x"]}],
    )
    (p,) = load_problems(
        str(path), FieldMap(id_key="idx", metadata_keys=["level", "tags"])
    )
    assert p.id == "7"
    assert p.metadata == {"level": 3, "tags": ["x"]}
    with pytest.raises(DataError, match=r"line 1.*'subject'.*metadata_keys"):
        load_problems(str(path), FieldMap(metadata_keys=["level", "subject"]))


def test_messages_key(tmp_path):
    chat = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "1+1?"},
    ]
    path = write_jsonl(tmp_path / "chat.jsonl", [{"chat": chat, "answer": "2"}])
    (p,) = load_problems(str(path), FieldMap(messages_key="chat"))
    assert p.messages == chat and p.prompt is None and p.question == "1+1?"
    bad = write_jsonl(
        tmp_path / "badchat.jsonl", [{"chat": [{"role": "user"}], "answer": "2"}]
    )
    with pytest.raises(DataError, match=r"line 1.*'chat'.*'content'"):
        load_problems(str(bad), FieldMap(messages_key="chat"))


def test_json_suffix_and_forced_format(tmp_path):
    rows = [{"prompt": "a", "answer": "1"}]
    assert (
        len(load_problems(str(write_jsonl(tmp_path / "d.json", rows)), FieldMap())) == 1
    )
    assert (
        len(
            load_problems(
                str(write_jsonl(tmp_path / "d.txt", rows)), FieldMap(), format="jsonl"
            )
        )
        == 1
    )
    with pytest.raises(DataError, match="format"):
        load_problems(
            str(tmp_path / "d.txt"), FieldMap()
        )  # existing file, unknown suffix
    with pytest.raises(ValueError, match="format"):
        load_problems(str(tmp_path / "d.json"), FieldMap(), format="csv")


# --------------------------------------------------------------------------- extractors


def test_gsm8k_extractor(tmp_path):
    worked = "She sells 1,000 - 3 = <<1000-3=997>>997.\n#### 1,000 is wrong\n#### 1,997"
    path = write_jsonl(tmp_path / "g.jsonl", [{"question": "q", "answer": worked}])
    (p,) = load_problems(
        str(path), FieldMap(prompt_key="question", answer_extractor="gsm8k")
    )
    assert p.answer == "1997"  # after the *last* ####, commas removed
    assert p.solution == worked  # whole field kept as the oracle solution
    # an explicit solution_key wins over the answer field
    path = write_jsonl(
        tmp_path / "g2.jsonl", [{"question": "q", "answer": "x\n#### 5", "sol": "S"}]
    )
    (p,) = load_problems(
        str(path),
        FieldMap(prompt_key="question", answer_extractor="gsm8k", solution_key="sol"),
    )
    assert (p.answer, p.solution) == ("5", "S")
    # no #### marker -> clear error
    path = write_jsonl(tmp_path / "g3.jsonl", [{"question": "q", "answer": "5"}])
    with pytest.raises(DataError, match=r"g3\.jsonl line 1.*####"):
        load_problems(
            str(path), FieldMap(prompt_key="question", answer_extractor="gsm8k")
        )


def test_boxed_extractor():
    assert (
        extract_answer(r"so \boxed{1} then \boxed{\frac{1}{2}}.", "boxed")
        == r"\frac{1}{2}"
    )
    assert (
        extract_answer(r"\boxed{\left( 3, \frac{\pi}{2} \right)}", "boxed")
        == r"\left( 3, \frac{\pi}{2} \right)"
    )
    assert extract_answer(r"\boxed{a{b{c}}d}", "boxed") == "a{b{c}}d"
    with pytest.raises(ValueError, match="boxed"):
        extract_answer("no box here", "boxed")
    with pytest.raises(ValueError):
        FieldMap(answer_extractor="regex")


def test_boxed_extractor_on_math500_solutions(benchmarks_dir):
    fields = FieldMap(
        id_key="unique_id",
        prompt_key="problem",
        answer_key="solution",
        answer_extractor="boxed",
    )
    problems = load_problems(str(benchmarks_dir / "math500.jsonl"), fields)
    reference = {p.id: p.answer for p in bench.math500(benchmarks_dir)}
    same = sum(p.answer == reference[p.id] for p in problems)
    assert same >= 450, (
        same
    )  # the boxed answer of the worked solution is the answer field


# --------------------------------------------------------------------------- parquet


def test_parquet_round_trip(tmp_path):
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")
    table = pa.table(
        {
            "uid": ["p0", "p1", "p2"],
            "question": ["What is 2+3?", "What is 10*10?", "Half of 9?"],
            "final": [5, 100, 4],
            "worked": ["2+3=5", "10*10=100", None],
            "difficulty": [1, 2, 3],
            "source": ["toy", "toy", "toy"],
        }
    )
    path = tmp_path / "toy.parquet"
    pq.write_table(table, path)
    fields = FieldMap(
        id_key="uid",
        prompt_key="question",
        answer_key="final",
        solution_key="worked",
        metadata_keys=["difficulty", "source"],
    )
    problems = load_problems(str(path), fields)
    assert problems == [
        Problem(
            id="p0",
            answer="5",
            prompt="What is 2+3?",
            solution="2+3=5",
            metadata={"difficulty": 1, "source": "toy"},
        ),
        Problem(
            id="p1",
            answer="100",
            prompt="What is 10*10?",
            solution="10*10=100",
            metadata={"difficulty": 2, "source": "toy"},
        ),
        Problem(
            id="p2",
            answer="4",
            prompt="Half of 9?",
            solution=None,
            metadata={"difficulty": 3, "source": "toy"},
        ),
    ]
    assert [p.id for p in load_problems(str(path), fields, limit=2)] == ["p0", "p1"]
    # a missing column names the file, the row index and the field
    with pytest.raises(DataError) as e:
        load_problems(str(path), FieldMap(prompt_key="question", answer_key="answer"))
    assert (
        "toy.parquet" in str(e.value)
        and "row index 0" in str(e.value)
        and "'answer'" in str(e.value)
    )


def test_parquet_not_parquet(tmp_path):
    path = tmp_path / "fake.parquet"
    path.write_text("not parquet")
    with pytest.raises(DataError, match="fake.parquet"):
        load_problems(str(path), FieldMap())


# --------------------------------------------------------------------------- hub


def test_hub_id_offline_names_id(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    # the flags are read when the libraries are imported; patch them if already imported
    if "huggingface_hub" in sys.modules:
        monkeypatch.setattr(
            sys.modules["huggingface_hub"].constants, "HF_HUB_OFFLINE", True
        )
    if "datasets" in sys.modules:
        monkeypatch.setattr(sys.modules["datasets"].config, "HF_HUB_OFFLINE", True)
    hub_id = "rlreason-no-such-org/no-such-dataset"
    start = time.monotonic()
    with pytest.raises(DataError) as e:
        load_problems(hub_id, FieldMap())
    assert time.monotonic() - start < 30
    assert hub_id in str(e.value)
    assert "local" in str(e.value)  # suggests a local file


# --------------------------------------------------------------------------- templates

CHAT_TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}<{{ m['role'] }}>{{ m['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}<assistant>{% endif %}"
)


@pytest.fixture
def char_tokenizer():
    """A tiny character-level tokenizer built in memory; prepends <s> by default."""
    from tokenizers import Regex, Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    specials = ["<unk>", "<pad>", "<s>", "</s>"]
    chars = sorted(set(string.printable))
    vocab = {tok: i for i, tok in enumerate(specials + chars)}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A", special_tokens=[("<s>", vocab["<s>"])]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<s>",
        eos_token="</s>",
        unk_token="<unk>",
        pad_token="<pad>",
        name_or_path="tiny-char-tokenizer",
    )


def test_plain_template(char_tokenizer):
    assert char_tokenizer.chat_template is None
    p = Problem(id="a", answer="2", prompt="1+1?")
    assert (
        build_prompt(p, char_tokenizer) == "1+1?"
    )  # auto -> plain without a chat template
    out = build_prompt(
        p,
        char_tokenizer,
        template="plain",
        system_prompt="Be brief.",
        plain_template="{system}\nQ: {prompt}\nPut the answer in \\boxed{}.\nA:",
    )
    assert out == "Be brief.\nQ: 1+1?\nPut the answer in \\boxed{}.\nA:"
    # a chat problem in a plain template uses its last user turn
    chat = Problem(
        id="b",
        answer="2",
        messages=[
            {"role": "user", "content": "hi"},
            {"role": "user", "content": "2+0?"},
        ],
    )
    assert build_prompt(chat, char_tokenizer, plain_template="Q: {prompt}") == "Q: 2+0?"

    # plain prompts get the tokenizer's default special tokens (here a BOS)
    bos = char_tokenizer.convert_tokens_to_ids("<s>")
    (ids,) = encode_prompts([p], char_tokenizer)
    assert ids == [bos] + char_tokenizer.convert_tokens_to_ids(list("1+1?"))


def test_chat_template_missing_raises_with_hint(char_tokenizer):
    p = Problem(id="a", answer="2", prompt="1+1?")
    with pytest.raises(ValueError) as e:
        build_prompt(p, char_tokenizer, template="chat")
    assert "tiny-char-tokenizer" in str(e.value)
    assert "template: plain" in str(e.value)
    with pytest.raises(ValueError, match="template: plain"):
        encode_prompts([p], char_tokenizer, template="chat")
    with pytest.raises(ValueError, match="template="):
        build_prompt(p, char_tokenizer, template="fancy")


def test_chat_template(char_tokenizer):
    char_tokenizer.chat_template = CHAT_TEMPLATE
    p = Problem(id="a", answer="2", prompt="1+1?")
    assert (
        build_prompt(p, char_tokenizer) == "<s><user>1+1?\n<assistant>"
    )  # auto -> chat
    assert (
        build_prompt(p, char_tokenizer, template="chat", system_prompt="Be brief.")
        == "<s><system>Be brief.\n<user>1+1?\n<assistant>"
    )
    # problem.messages are used as is
    chat = Problem(
        id="b",
        answer="2",
        messages=[{"role": "system", "content": "S"}, {"role": "user", "content": "Q"}],
    )
    assert (
        build_prompt(chat, char_tokenizer, system_prompt="ignored")
        == "<s><system>S\n<user>Q\n<assistant>"
    )
    # plain can still be forced
    assert build_prompt(p, char_tokenizer, template="plain") == "1+1?"

    # chat prompts are encoded without adding special tokens: exactly one BOS (the template's)
    bos = char_tokenizer.convert_tokens_to_ids("<s>")
    ids_list = encode_prompts([p, chat], char_tokenizer)
    assert len(ids_list) == 2
    expected = [bos] + char_tokenizer.convert_tokens_to_ids(
        list("<user>1+1?\n<assistant>")
    )
    assert ids_list[0] == expected
    assert ids_list[1].count(bos) == 1
    assert encode_prompts([], char_tokenizer) == []
