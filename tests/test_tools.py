"""Multi-turn, tool-using rollouts: the episode's token layout, tools that fail or hang,
limits, the chat-template format, and a training run in an environment."""
from __future__ import annotations

import json
import time

import pytest
import torch
from conftest import GUIDED_OVERRIDES
from serving import logprobs_of

from rlreason.batching import Sequence, collate, completion_logprobs
from rlreason.rollout.environment import StepResult
from rlreason.rollout.episodes import episode_metrics, run_episodes
from rlreason.rollout.hf import HFEngine
from rlreason.rollout.tool_env import ToolEnv
from rlreason.rollout.tool_format import ChatFormat, TagFormat
from rlreason.rollout.tools import ToolError, calculator, run_python
from rlreason.tiny import char_tokenizer, tiny_llama
from rlreason.types import Completion, Problem, SamplingParams

PROBLEM = Problem(id="p0", prompt="12*34=", answer="408")


class Scripted:
    """Answers every turn with the same observation; ends after `turns` turns."""

    stop = ()

    def __init__(self, tokenizer=None, observation="<r>ok</r>", turns=2):
        self.observation, self.turns, self.seen = observation, turns, []

    def reset(self, problem):
        self.problem = problem

    def step(self, turn):
        self.seen.append(turn)
        return StepResult(observation=self.observation, done=len(self.seen) >= self.turns,
                          reward=0.25, info={"tool_calls": 1})


@pytest.fixture(scope="module")
def model_and_tok():
    tok = char_tokenizer()
    return tiny_llama(tok, 2, 64, 128, 4, seed=0).eval(), tok


def _episodes(model, tok, make_env, n=3, max_turns=4, max_total_tokens=64, **sp):
    engine = HFEngine(model, tok, seed=0)
    prompt = tok(PROBLEM.prompt, add_special_tokens=False)["input_ids"]
    sampling = SamplingParams(**{"max_tokens": 5, "min_tokens": 5, "seed": 1, **sp})  # no early EOS
    return prompt, run_episodes(engine, tok, make_env, [PROBLEM], [prompt], n, sampling,
                                max_turns=max_turns, max_total_tokens=max_total_tokens)[0]


def test_a_two_turn_episode_trains_only_the_model_tokens_with_their_exact_logprobs(model_and_tok):
    model, tok = model_and_tok
    prompt, episodes = _episodes(model, tok, lambda: Scripted(turns=2))
    obs = tok("<r>ok</r>", add_special_tokens=False)["input_ids"]
    for c in episodes:
        # turn 1 (5 sampled tokens), the observation's own tokens, turn 2 (5 sampled tokens)
        assert c.loss_mask == [1] * 5 + [0] * len(obs) + [1] * 5
        assert c.token_ids[5 : 5 + len(obs)] == obs  # inserted as tokenised alone, not re-tokenised
        assert c.info["turns"] == 2 and c.info["tool_calls"] == 2 and c.info["env_reward"] == 0.5
        # the environment ended it (not a limit), though its last turn used all 5 tokens
        assert c.info["truncated"] == 0 and c.finish_reason == "length"
        # teacher-forced over the whole transcript: the model tokens' log-probs are the
        # sampler's (EOS excluded: every model token here is under the 5-token minimum)
        forced = logprobs_of(model, prompt, c.token_ids, banned=(tok.eos_token_id,), held=c.loss_mask)
        model_pos = [i for i, m in enumerate(c.loss_mask) if m]
        assert [c.logprobs[i] for i in model_pos] == pytest.approx(forced[model_pos].tolist(), abs=1e-4)
        assert all(c.logprobs[i] == 0.0 for i, m in enumerate(c.loss_mask) if not m)
    # the trainer's view: the loss mask is the completion mask, in both batch layouts
    seqs = [Sequence(prompt=prompt, completion=c.token_ids, advantage=1.0, truncated=False,
                     loss_mask=c.loss_mask) for c in episodes]
    for pack in (False, True):  # the policy's log-probs, as the trainer computes them
        batch = collate(seqs, tok.pad_token_id, "cpu", pack=pack)
        assert batch["completion_mask"].tolist() == [[float(m) for m in c.loss_mask] for c in episodes]
        with torch.no_grad():
            logp, _ = completion_logprobs(model, batch, 1.0)
        for i, c in enumerate(episodes):
            policy = logprobs_of(model, prompt, c.token_ids)
            got = [float(logp[i, t]) for t, m in enumerate(c.loss_mask) if m]
            assert got == pytest.approx([float(policy[t]) for t, m in enumerate(c.loss_mask) if m], abs=1e-4)
    assert seqs[0].num_trained_tokens == 10
    assert episode_metrics(episodes)["env/tool_calls"] == 2


def test_limits_truncate_episodes_by_turns_and_by_tokens(model_and_tok):
    model, tok = model_and_tok
    _, by_turns = _episodes(model, tok, lambda: Scripted(turns=99), max_turns=3)
    for c in by_turns:
        assert c.info["turns"] == 3 and c.info["truncated"] == 1 and c.finish_reason == "length"
        assert sum(c.loss_mask) == 15
    obs_len = len(tok("<r>ok</r>", add_special_tokens=False)["input_ids"])
    _, by_tokens = _episodes(model, tok, lambda: Scripted(turns=99), max_total_tokens=5 + obs_len + 3)
    for c in by_tokens:  # turn 1, the observation, then a turn cut to the 3 tokens left
        assert len(c.token_ids) == 5 + obs_len + 3 and c.finish_reason == "length"
        assert c.info["truncated"] == 1 and c.info["turns"] == 2
    _, no_room = _episodes(model, tok, lambda: Scripted(turns=99), max_total_tokens=5 + obs_len)
    assert all(len(c.token_ids) == 5 and c.info["truncated"] == 1 for c in no_room)  # no observation left dangling
    assert episode_metrics(by_turns)["env/truncated"] == 1.0


def test_an_answer_without_a_call_or_an_eos_ends_the_episode(model_and_tok):
    model, tok = model_and_tok
    env = ToolEnv(tok, tools=["calculator"], format="tags")
    assert env.step("the answer is 408") == StepResult(done=True)
    _, eps = _episodes(model, tok, lambda: ToolEnv(tok, tools=["calculator"], format="tags"), n=4)
    assert all(c.info["turns"] == 1 and c.info["tool_calls"] == 0 for c in eps)  # a random model never calls


def test_calculator_does_arithmetic_and_nothing_else():
    assert calculator("123*45") == "5535" and calculator({"expression": "(2+3)**2 / 5"}) == "5"
    assert calculator("7/2") == "3.5" and calculator("-3 // 2") == "-2"
    for bad, why in [("__import__('os')", "not arithmetic"), ("x+1", "not arithmetic"), ("1/0", "division by zero"),
                     ("9**9**9", "exponent"), ("1+", "cannot parse"), ({"expr": "1"}, "missing argument"),
                     ("((((9**99)**99)**99)**99)**99", "more than 4096 bits"),  # each exponent small
                     ("*".join(["10**99"] * 20), "more than 4096 bits")]:
        with pytest.raises(ToolError, match=why):
            calculator(bad)


def test_a_tool_that_raises_answers_an_error_and_the_episode_goes_on(user_module):
    user_module("my_tools", "def lookup(arguments):\n    raise KeyError('no such entry: ' + arguments)\n")
    tok = char_tokenizer()
    env = ToolEnv(tok, tools=["calculator", "my_tools:lookup"], format="tags")
    assert env.stop == ("</calculator>", "</lookup>")
    r = env.step("<lookup>zz</lookup>")
    assert not r.done and r.observation == "<result>error: 'no such entry: zz'</result>"
    assert r.info == {"tool_calls": 1, "tool_errors": 1}
    r = env.step("<calculator>1/0</calculator> and <calculator>2*3</calculator>")
    assert r.observation == "<result>error: division by zero</result><result>6</result>"
    assert r.info == {"tool_calls": 2, "tool_errors": 1}
    with pytest.raises(ValueError, match="not a registered tool"):
        ToolEnv(tok, tools=["calculater"])
    with pytest.raises(ValueError, match=r"env.kwargs.tool_kwargs.python: .*timeout"):
        ToolEnv(tok, tools=["python"], tool_kwargs={"python": {"timeout": 5}})  # a typo fails at once


def test_the_python_tool_runs_code_and_kills_what_hangs():
    assert run_python("print(sum(range(10)))") == "45"
    t0 = time.perf_counter()
    with pytest.raises(ToolError, match="timed out after 1 s"):
        run_python("while True: pass", timeout_s=1.0)
    assert time.perf_counter() - t0 < 5
    assert "network access is disabled" in run_python("import socket\nsocket.socket()")
    assert "MemoryError" in run_python("x = bytearray(400 << 20)", memory_mb=200)
    assert run_python("print('x' * 5000)", max_output_chars=20).endswith("[cut at 20 characters]")
    flood = run_python("import sys\nfor _ in range(200): sys.stdout.write('y' * 100_000)", max_output_chars=30)
    assert flood == "y" * 30 + "... [cut at 30 characters]"  # read from a file, at most 4x the limit
    env = ToolEnv(char_tokenizer(), tools=["python"], format="tags", tool_kwargs={"python": {"timeout_s": 1}})
    r = env.step("<python>import time\ntime.sleep(30)</python>")
    assert r.observation == "<result>error: timed out after 1 s</result>" and not r.done


CHAT_TEMPLATE = (  # Qwen2.5's shape: tool outputs as <tool_response> in a user turn
    "{% for m in messages %}"
    "{% if m.role == 'tool' %}<|im_start|>user\n<tool_response>\n{{ m.content }}\n</tool_response><|im_end|>\n"
    "{% else %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def test_chat_format_reads_json_calls_and_answers_with_the_templates_tool_message():
    tok = char_tokenizer()
    tok.add_special_tokens({"additional_special_tokens": ["<|im_start|>", "<|im_end|>"]})
    tok.chat_template = CHAT_TEMPLATE + "{# <tool_call> #}"
    env = ToolEnv(tok, tools=["calculator"], format="auto")
    assert isinstance(env.format, ChatFormat) and env.stop == ("</tool_call>",)
    call = '<tool_call>\n' + json.dumps({"name": "calculator", "arguments": {"expression": "6*7"}}) + '\n</tool_call>'
    r = env.step("Let me compute. " + call)
    assert r.observation == "<|im_end|>\n<|im_start|>user\n<tool_response>\n42\n</tool_response><|im_end|>\n" \
                            "<|im_start|>assistant\n"
    ids = tok(r.observation, add_special_tokens=False)["input_ids"]
    assert ids[0] == tok.convert_tokens_to_ids("<|im_end|>")  # special tokens stay single tokens
    bad = env.step("<tool_call>{not json}</tool_call>")
    assert "not valid JSON" in bad.observation and bad.info["tool_errors"] == 1
    assert isinstance(ToolEnv(char_tokenizer(), format="auto").format, TagFormat)  # no template: tags
    with pytest.raises(ValueError, match="no chat template"):
        ChatFormat(char_tokenizer())


def test_a_run_in_an_environment_trains_and_logs_episode_metrics(tiny_recipe, user_module):
    """A user's environment by path: every episode gets an observation and two turns; the
    run logs the episode counters, adds the environment's reward, and evaluates in episodes."""
    user_module("my_env", "from rlreason.rollout.environment import StepResult\n"
                "class TwoTurns:\n"
                "    stop = ()\n"
                "    def __init__(self, tokenizer, note='<n>'):\n"
                "        self.note, self.turns = note, 0\n"
                "    def reset(self, problem):\n"
                "        self.turns = 0\n"
                "    def step(self, turn):\n"
                "        self.turns += 1\n"
                "        return StepResult(observation=self.note, done=self.turns >= 2, reward=1.0,\n"
                "                          info={'tool_calls': 1})\n")
    from rlreason.trainer import build_run, rl_step

    cfg = tiny_recipe("env.name='my_env:TwoTurns'", "env.kwargs={note: '<n>'}", "env.max_turns=3",
                      "env.max_total_tokens=20", "rollout.min_completion_length=6")  # no EOS: two turns
    run = build_run(cfg, log=lambda *_: None)
    m = rl_step(run)
    assert m["env/turns"] == 2.0 and m["env/tool_calls"] == 2.0
    assert m["rewards/env"] == 2.0 and m["reward"] >= 2.0  # the environment's reward is added
    from rlreason.trainer import evaluate

    ev = evaluate(run)
    assert ev["eval/completion_length"] > 2 * 2  # two turns and an observation per held-out episode
    with pytest.raises(ValueError, match="env.kwargs do not fit environment"):
        build_run(tiny_recipe("env.name='my_env:TwoTurns'", "env.kwargs={colour: red}"), log=lambda *_: None)


def test_eval_samples_episodes_with_env(tmp_path, user_module, capsys):
    """`rlreason eval --env`: held-out problems sampled as episodes, the observation in the
    graded transcript; bad options are named."""
    from rlreason.cli import main

    user_module("eval_env", "from rlreason.rollout.environment import StepResult\n"
                "class Note:\n"
                "    stop = ()\n"
                "    def __init__(self, tokenizer, note):\n"
                "        self.note, self.n = note, 0\n"
                "    def reset(self, problem):\n"
                "        self.n = 0\n"
                "    def step(self, turn):\n"
                "        self.n += 1\n"
                "        return StepResult(observation=self.note, done=self.n >= 2)\n")
    tok = char_tokenizer()
    tiny_llama(tok, 2, 64, 128, 4, seed=0).save_pretrained(tmp_path / "m")
    tok.save_pretrained(tmp_path / "m")
    bench = tmp_path / "b.jsonl"
    bench.write_text("".join(json.dumps({"question": f"{a}*3=", "answer": str(3 * a)}) + "\n" for a in range(4)))
    args = ["eval", "--model", str(tmp_path / "m"), "--benchmark", str(bench), "--problem-key", "question",
            "--n", "2", "--max-new-tokens", "4", "--dtype", "float32", "--quiet", "--env", "eval_env:Note",
            "--max-turns", "3", "--output", str(tmp_path / "out")]
    assert main([*args, "--env-kwargs", '{"note": "[NOTE]"}']) == 0
    rows = [json.loads(x) for x in (tmp_path / "out" / "samples.jsonl").read_text().splitlines()]
    assert all("[NOTE]" in c for r in rows for c in r["completions"])  # the observation is in the transcript
    capsys.readouterr()
    assert main([*args, "--env-kwargs", "{note"]) == 2
    assert "--env-kwargs: not JSON" in capsys.readouterr().err
    assert main([*args[:-6], "--env", "tool", "--output", str(tmp_path / "o2")]) == 2
    assert "did you mean tools" in capsys.readouterr().err


def test_the_warm_start_probe_of_a_tool_task_asks_for_the_first_call():
    from rlreason.config import load_config
    from rlreason.data.synthetic import tool_solution
    from rlreason.tiny import probe_target, warmstart_problems

    assert probe_target(tool_solution("12*3", 36)) == "<calculator>12*3</calculator>"
    assert probe_target("#### 36") == "#### 36"
    cfg = load_config(None, ["data.source=synthetic", "data.synthetic.task=multiplication",
                             "data.synthetic.difficulty=3", "data.synthetic.tool_calls=true"])
    for p in warmstart_problems(cfg.model, cfg.data.synthetic, None, 5, probe=True):
        a, b = p.metadata["a"], p.metadata["b"]
        assert p.answer == f"<calculator>{a}*{b}</calculator>"


def test_guidance_composes_with_an_environment(tiny_recipe, user_module, tmp_path, train_seeing_batches):
    """POPE in episodes: probing and guided prompts go through the environment; the hint is
    part of the prompt the episode starts from, so only the episode's model tokens train."""
    user_module("note_env", "from rlreason.rollout.environment import StepResult\n"
                "class Note:\n"
                "    stop = ()\n"
                "    def __init__(self, tokenizer):\n"
                "        self.n = 0\n"
                "    def reset(self, problem):\n"
                "        self.n = 0\n"
                "    def step(self, turn):\n"
                "        self.n += 1\n"
                "        return StepResult(observation='|', done=self.n >= 2)\n")
    seen = train_seeing_batches(tiny_recipe(*GUIDED_OVERRIDES, "env.name='note_env:Note'", "env.max_total_tokens=16",
                                            "rollout.min_completion_length=6"))  # turns end by length: the env answers
    guided = [s for s in seen[0] if not char_tokenizer().decode(s.prompt).endswith("=")]
    assert guided, "no guided prompt was trained on"
    bar = char_tokenizer().convert_tokens_to_ids("|")
    masked = []
    for s in seen[0]:  # every episode: model tokens, then (if it went on) the observation, masked
        assert s.loss_mask is not None and len(s.loss_mask) == len(s.completion)
        masked += [t for t, m in zip(s.completion, s.loss_mask) if m == 0]
    assert masked and set(masked) == {bar}  # exactly the observations are out of the loss
    rows = [json.loads(r) for r in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines() if "reward" in r]
    assert rows[0]["guided/frac_prompts"] == pytest.approx(0.5) and "env/turns" in rows[0]


def test_a_turn_the_engine_stopped_on_its_own_ends_the_episode():
    """An engine may stop on an end id we do not know (vLLM's generation_config EOS ids) or
    a recipe stop string: any stop that is not the environment's ends the episode; a stop
    at the environment's string (a tool call) lets it answer."""
    tok = char_tokenizer()

    class Engine:
        def __init__(self, text):
            self.ids = tok(text, add_special_tokens=False)["input_ids"]

        def generate(self, prompts, n, sampling):
            return [[Completion(list(p), list(self.ids), [0.0] * len(self.ids), "stop")] for p in prompts]

    class CallsAlways(Scripted):
        stop = ("</c>",)

    prompt = tok(PROBLEM.prompt, add_special_tokens=False)["input_ids"]
    sp = SamplingParams(max_tokens=8)
    done = run_episodes(Engine("42"), tok, lambda: CallsAlways(turns=99), [PROBLEM], [prompt], 1, sp,
                        max_turns=3, max_total_tokens=64)[0][0]
    assert done.info["turns"] == 1 and done.finish_reason == "stop" and done.info["truncated"] == 0
    calls = run_episodes(Engine("<c>1</c>"), tok, lambda: CallsAlways(turns=99), [PROBLEM], [prompt], 1, sp,
                         max_turns=3, max_total_tokens=64)[0][0]
    assert calls.info["turns"] == 3 and calls.info["truncated"] == 1  # the environment answered each call
