"""The tiny model's warm-start: stopped by what the model can do, with progress shown."""
from __future__ import annotations

from rlreason.data.synthetic import synthetic_problems
from rlreason.tiny import accuracy_probe, char_tokenizer, supervised_warmstart, tiny_llama


def _tiny():
    tok = char_tokenizer()
    return tiny_llama(tok, 1, 32, 64, 2, seed=0), tok


def _pairs(n=64):
    return [(p.prompt, p.solution) for p in synthetic_problems("addition", n, 1, seed=0, split="x")]


def test_warmstart_stops_at_the_first_check_that_reaches_the_target():
    model, tok = _tiny()
    calls = []

    def probe():  # 0.1, 0.2, 0.3, ... at successive checks
        calls.append(1)
        return 0.1 * len(calls)

    lines = []
    losses = supervised_warmstart(model, tok, _pairs(), steps=200, batch_size=8, lr=1e-3,
                                  probe=probe, target=0.3, check_every=5, log=lines.append)
    assert len(losses) == 15 and len(calls) == 3  # checks at steps 5, 10, 15
    assert lines[-1].startswith("  warm-start step 15/200") and "probe accuracy 0.30 (target 0.30)" in lines[-1]


def test_warmstart_without_reaching_the_target_says_so():
    model, tok = _tiny()
    lines = []
    losses = supervised_warmstart(model, tok, _pairs(), steps=12, batch_size=8, lr=1e-3,
                                  probe=lambda: 0.0, target=0.5, check_every=5, log=lines.append)
    assert len(losses) == 12
    assert "not reached in 12 steps" in lines[-1]
    assert any(line.startswith("  warm-start step 12/12") for line in lines)


def test_accuracy_probe_measures_the_model_as_it_is_now():
    """Same sampling seed at every call: no training in between gives the same value; an
    exact-match grader on an untrained model gives (almost) nothing."""
    model, tok = _tiny()
    problems = synthetic_problems("addition", 32, 1, seed=0, split="probe")
    probe = accuracy_probe(model, tok, problems, seed=0)
    first = probe()
    assert first == probe() and 0.0 <= first <= 0.2
    pairs = [(p.prompt, p.solution) for p in problems]
    supervised_warmstart(model, tok, pairs * 8, steps=150, batch_size=32, lr=3e-3)
    assert probe() > first  # it learned something, and the probe sees the new weights
