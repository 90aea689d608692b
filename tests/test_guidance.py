"""Guided exploration (POPE): probing, prefix search, hint masking, pool refresh."""
from __future__ import annotations

import json

import pytest
from conftest import GUIDED_OVERRIDES

from rlreason.config import load_config
from rlreason.rollout.guidance import (
    Guide,
    encode_guided,
    guided_problem,
    probe,
    scored_text,
    solution_prefix,
)
from rlreason.tiny import char_tokenizer
from rlreason.types import Problem


def _cfg(*overrides):
    return load_config(None, ["guidance.enabled=true", "guidance.style=prefill", *overrides]).guidance


def _problems():
    return [Problem(id=f"p{i}", prompt=f"{i}+{i}=", answer=str(2 * i)[::-1],
                    solution="abcdefgh") for i in range(6)]


def test_prefix_units():
    tok = char_tokenizer()
    assert solution_prefix("abcdefgh", 0.25, "tokens", tok) == "ab"
    assert solution_prefix("step1\nstep2\nstep3\nstep4\n", 0.5, "steps") == "step1\nstep2\n"
    assert solution_prefix("One. Two! Three? Four.", 0.5, "sentences") == "One. Two! "
    assert solution_prefix("abc", 0.0, "tokens", tok) == ""


def test_probing_marks_exactly_the_never_solved_problems():
    """A scripted policy: p0, p2 are solved once in 8 samples, the rest never."""
    solved_once = {"p0", "p2"}

    def sample(problems, k):
        return [[1.0 if (p.id in solved_once and j == 3 and not p.metadata.get("guided"))
                 else 0.0 for j in range(k)] for p in problems]

    verdicts, hints = probe(_problems(), sample, _cfg(), char_tokenizer())
    assert {pid for pid, v in verdicts.items() if v["hard"]} == {"p1", "p3", "p4", "p5"}
    assert verdicts["p0"]["correct"] == 1 and verdicts["p1"]["correct"] == 0
    assert set(hints) == {"p1", "p3", "p4", "p5"}


def test_prefix_search_picks_the_shortest_working_prefix():
    """Scripted policy: problem pN is solved given a hint of at least N characters."""
    need = {"p1": 1, "p3": 3, "p4": 4, "p5": 99}

    def sample(problems, k):
        out = []
        for p in problems:
            hint = p.metadata.get("hint", "")
            ok = p.metadata.get("guided") and len(hint) >= need.get(p.id, 0)
            out.append([1.0 if ok else 0.0] * k)
        return out

    cfg = _cfg("guidance.ladder=[0.125, 0.25, 0.5]")  # of 8 characters: 1, 2, 4
    verdicts, hints = probe(_problems()[1:], sample, cfg, char_tokenizer())
    assert hints["p1"] == "a" and verdicts["p1"]["hint_fraction"] == 0.125
    assert hints["p3"] == "abcd" and hints["p4"] == "abcd"  # 2 chars fail, 4 work
    assert hints["p5"] == "abcd" and not verdicts["p5"]["hint_works"]  # none works: longest
    assert verdicts["p3"]["hint_works"] and verdicts["p2"]["hard"]


def test_a_ladder_of_one_rung_is_probed():
    """search with ladder [0.5]: the rung is sampled like any other and its verdict kept
    (p1 works with the hint, p2 does not); fixed mode alone skips the sampling."""
    calls = []

    def sample(problems, k):
        calls.append([bool(p.metadata.get("guided")) for p in problems])
        return [[1.0 if p.metadata.get("guided") and p.id == "p1" else 0.0] * k for p in problems]

    verdicts, hints = probe(_problems()[:3], sample, _cfg("guidance.ladder=[0.5]"), char_tokenizer())
    assert len(calls) == 2 and calls[1] == [True, True, True]  # hardness, then the rung
    assert verdicts["p1"]["hint_works"] is True and verdicts["p2"]["hint_works"] is False
    assert hints["p1"] == "abcd" and verdicts["p2"]["hint_fraction"] == 0.5
    calls.clear()
    verdicts, hints = probe(_problems()[:3], sample, _cfg("guidance.prefix_mode=fixed"), char_tokenizer())
    assert len(calls) == 1 and verdicts["p1"]["hint_works"] is None and hints["p1"] == "ab"


def _twin_setup(*overrides):
    from rlreason.data.stream import ProblemStream

    probs = _problems()
    hard = ["p1", "p3", "p4"]
    guide = Guide(_cfg(*overrides), hints={pid: "ab" for pid in hard}, pool=list(hard))
    return guide, {p.id: p for p in probs}, ProblemStream(probs, seed=0), hard


def test_twins_batch_holds_each_guided_prompt_with_its_bare_twin():
    from types import SimpleNamespace

    from rlreason.data.stream import ProblemStream
    from rlreason.sharding import rank_share

    assert load_config(None, []).guidance.batch == "twins"
    guide, by_id, stream, hard = _twin_setup()
    batch = guide.batch(by_id, stream, 8)  # 4 pairs from a pool of 3: the pool cycles
    assert len(batch) == 8 and stream.position == 0  # nothing from the whole training set
    assert sum(bool(p.metadata.get("guided")) for p in batch) == 4  # 1:1
    for g, u in zip(batch[0::2], batch[1::2]):  # separate prompts, so separate groups
        assert g.metadata.get("guided") and g.id in hard and g.metadata["hint"] == "ab"
        assert u is by_id[g.id] and not u.metadata.get("guided")
    assert {p.id for p in batch} == set(hard)
    for r in range(2):  # two ranks, 4 prompts each: each pair whole on one rank
        share = rank_share(batch, SimpleNamespace(num_processes=2, process_index=r))
        assert [p.id for p in share[0::2]] == [p.id for p in share[1::2]]
    odd = guide.batch(by_id, stream, 5)  # the odd slot comes from the training stream
    assert sum(bool(p.metadata.get("guided")) for p in odd) == 2 and stream.position == 1
    guide.pool = []  # every hard problem solved: back to the training stream, and it shows
    fresh = ProblemStream(list(by_id.values()), seed=0)
    fresh.take(1)
    batch = guide.batch(by_id, stream, 4)
    assert [p.id for p in batch] == [p.id for p in fresh.take(4)]
    m = guide.step_metrics(batch, [0.0] * 8, 2, num_processes=1)
    assert m["guided/frac_prompts"] == 0 and m["guided/pool"] == 0 and m["guided/reward"] is None


def test_mixed_batch_is_guided_ratio_plus_the_whole_training_set():
    from rlreason.data.stream import ProblemStream

    guide, by_id, stream, hard = _twin_setup("guidance.batch=mixed", "guidance.guided_ratio=0.25")
    batch = guide.batch(by_id, stream, 8)
    ref, _, _, _ = _twin_setup("guidance.batch=mixed")
    expected = ref.take(by_id, 2) + ProblemStream(list(by_id.values()), seed=0).take(6)
    assert [(p.id, p.prompt, bool(p.metadata.get("guided"))) for p in batch] == \
        [(p.id, p.prompt, bool(p.metadata.get("guided"))) for p in expected]
    assert sum(bool(p.metadata.get("guided")) for p in batch) == 2 and stream.position == 6


def test_style_auto_is_instruct_for_chat_prompts_and_prefill_for_plain(tmp_path):
    from types import SimpleNamespace

    from rlreason.data.stream import ProblemStream
    from rlreason.rollout.guidance import resolve_style, write_verdicts
    from rlreason.trainer import setup_guidance

    plain, chat = char_tokenizer(), char_tokenizer()
    chat.chat_template = "{% for m in messages %}{{ m['content'] }}{% endfor %}"
    assert load_config(None, []).guidance.style == "auto"
    assert resolve_style("auto", "auto", chat) == "instruct" == resolve_style("auto", "chat", chat)
    assert resolve_style("auto", "auto", plain) == "prefill" == resolve_style("auto", "plain", chat)
    assert resolve_style("prefill", "auto", chat) == "prefill"
    with pytest.raises(ValueError, match="resolve"):
        guided_problem(_problems()[0], "ab", load_config(None, []).guidance)
    hardness = tmp_path / "hardness.json"
    write_verdicts(hardness, {"p1": {"hard": True, "k": 8}}, {"p1": "ab"})
    for tok, style in [(chat, "instruct"), (plain, "prefill")]:  # what the trainer builds
        cfg = load_config(None, ["guidance.enabled=true", f"guidance.hardness_file={hardness}"])
        run = SimpleNamespace(cfg=cfg, tokenizer=tok, train_data=ProblemStream(_problems(), 0),
                              problems_by_id={}, guide=None,
                              accelerator=SimpleNamespace(num_processes=1, process_index=0,
                                                          is_main_process=True))
        setup_guidance(run, tmp_path, log=lambda s: None)
        g, u = run.guide.batch(run.problems_by_id, run.train_data, 2)
        assert run.guide.cfg.style == style and g.metadata["guided"] and u.id == g.id
        assert ("Partial solution: ab" in g.prompt) == (style == "instruct")
        assert bool(g.metadata.get("hint_in_prompt")) == (style == "instruct")


def test_hint_is_prompt_context_and_counts_for_the_reward():
    tok = char_tokenizer()
    p = _problems()[3]
    g = guided_problem(p, "ab", _cfg())
    encode = lambda q: tok(q.prompt, add_special_tokens=False)["input_ids"]  # noqa: E731
    ids = encode_guided(g, encode, tok)
    assert ids == encode(p) + tok("ab", add_special_tokens=False)["input_ids"]
    assert scored_text(g, "cd") == "abcd" and scored_text(p, "cd") == "cd"
    ins = guided_problem(p, "ab", _cfg("guidance.style=instruct"))
    assert "Partial solution: ab" in ins.prompt and encode_guided(ins, encode, tok) == encode(ins)


def test_refresh_drops_problems_solved_unguided():
    guide = Guide(_cfg(), hints={"p1": "a", "p2": "b"}, pool=["p1", "p2"])
    probs = [Problem(id="p1", prompt="x", answer="1"),
             guided_problem(Problem(id="p2", prompt="y", answer="2"), "b", _cfg())]
    guide.refresh(probs, [0.0, 1.0, 1.0, 1.0], group=2)  # p1 unguided: one success
    assert guide.pool == ["p2"] and guide.solved == ["p1"]  # guided success does not count


def test_guided_training_masks_hints_and_logs_guidance(tiny_recipe, tmp_path, train_seeing_batches):
    """End to end: probing writes hardness.json, guided prompts end with the hint tokens,
    and only completion tokens carry loss."""
    seen = train_seeing_batches(tiny_recipe(*GUIDED_OVERRIDES))
    verdicts = json.loads((tmp_path / "run" / "hardness.json").read_text())
    hard = [pid for pid, v in verdicts.items() if v["hard"]]
    assert len(verdicts) == 12 and hard and all("hint" in verdicts[pid] for pid in hard)
    assert all(isinstance(verdicts[pid]["hint_works"], bool) for pid in hard)  # the rung was probed
    tok = char_tokenizer()
    hinted, bare = [], []
    for s in seen[0]:
        text = tok.decode(s.prompt)
        if not text.endswith("="):  # guided (prefill: a plain tokenizer): the hint follows "="
            hint = text.split("=", 1)[1]
            assert any(verdicts[pid].get("hint") == hint for pid in hard)
            hinted.append(text.split("=", 1)[0] + "=")
        else:
            bare.append(text)
    # twins: each guided prompt's bare problem is in the same step, 1:1
    assert hinted and sorted(hinted) == sorted(bare)
    rows = [json.loads(r) for r in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    train_rows = [r for r in rows if "reward" in r]
    assert train_rows[0]["guided/frac_prompts"] == pytest.approx(0.5)
    assert "guided/pool" in train_rows[0]
    # loss mask: exactly the completion tokens (hint tokens are in the prompt)
    from rlreason.batching import collate

    batch = collate(seen[0], 0, "cpu", pack=True)
    assert int(batch["completion_mask"].sum()) == sum(len(s.completion) for s in seen[0])
    targets = sorted(batch["gather"][3].tolist())  # the tokens the loss is computed on
    assert targets == sorted(t for s in seen[0] for t in s.completion)
