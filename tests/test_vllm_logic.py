"""The vLLM engine's own logic, tested with or without vLLM installed."""
from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from rlreason.rollout.vllm import chunked, lora_rank_slot, parse_output, sampling_kwargs, vllm_weight_names
from rlreason.types import SamplingParams


def test_sampling_kwargs_ask_for_the_sampled_tokens_logprob():
    kw = sampling_kwargs(SamplingParams(temperature=0.7, top_p=0.9, max_tokens=12,
                                        stop_token_ids=(5,)), n=4, seed=3)
    assert kw == dict(n=4, temperature=0.7, top_p=0.9, max_tokens=12, logprobs=0, seed=3,
                      stop_token_ids=[5])


def test_parse_output_reads_tokens_logprobs_and_finish_reason():
    lp = lambda v: SimpleNamespace(logprob=v)  # noqa: E731
    sample = SimpleNamespace(token_ids=[7, 8, 2], finish_reason="stop",
                             logprobs=[{7: lp(-0.5)}, {8: lp(-1.0), 9: lp(-2.0)}, {2: lp(-0.1)}])
    c = parse_output([1, 2], sample)
    assert c.token_ids == [7, 8, 2] and c.logprobs == [-0.5, -1.0, -0.1]
    assert c.finish_reason == "stop" and c.prompt_token_ids == [1, 2]
    c = parse_output([1], SimpleNamespace(token_ids=[4], finish_reason="length", logprobs=None))
    assert c.finish_reason == "length" and c.logprobs == [0.0]


def test_weight_names_undo_peft_drop_lora_and_send_the_tied_head():
    t = torch.zeros(1)
    named = [("base_model.model.model.embed_tokens.weight", t),
             ("base_model.model.model.layers.0.self_attn.q_proj.base_layer.weight", t),
             ("base_model.model.model.layers.0.self_attn.q_proj.lora_A.default.weight", t),
             ("base_model.model.model.norm.weight", t)]
    out = [n for n, _ in vllm_weight_names(named, tie_word_embeddings=True)]
    assert out == ["model.embed_tokens.weight", "model.layers.0.self_attn.q_proj.weight",
                   "model.norm.weight", "lm_head.weight"]
    out = [n for n, _ in vllm_weight_names(named, tie_word_embeddings=False)]
    assert "lm_head.weight" not in out


def test_chunks_are_bounded_in_bytes():
    named = [(f"w{i}", torch.zeros(n)) for i, n in enumerate([10, 10, 30, 5, 100])]  # float32
    chunks = list(chunked(named, max_bytes=80))
    assert [[n for n, _ in c] for c in chunks] == [["w0", "w1"], ["w2"], ["w3"], ["w4"]]
    assert sum(len(c) for c in chunks) == len(named)




def test_lora_rank_rounds_up_to_a_rank_vllm_serves():
    assert [lora_rank_slot(r) for r in (1, 4, 8, 9, 300)] == [1, 8, 8, 16, 320]
    with pytest.raises(ValueError, match="model.lora.r"):
        lora_rank_slot(1024)


class _StubLLM:
    def __init__(self, log):
        self.log = log

    def sleep(self, level=1):
        self.log.append("sleep")

    def wake_up(self):
        self.log.append("wake_up")

    def collective_rpc(self, fn):
        self.log.append("reload")

    def reset_prefix_cache(self):
        self.log.append("reset_prefix_cache")


def test_a_sleeping_engine_wakes_before_it_takes_new_weights():
    """The known failure elsewhere: weights pushed to a sleeping engine are lost at wake-up.
    Here every push wakes the engine first, and generation never starts asleep."""
    from rlreason.rollout.vllm import VLLMEngine

    log: list[str] = []
    eng = object.__new__(VLLMEngine)  # the engine's own logic, vLLM itself stubbed
    eng.llm, eng.sleep_mode, eng.sleeping, eng.tie_word_embeddings = _StubLLM(log), True, False, False
    eng.in_process = True
    eng.sleep()
    eng.sleep()  # already asleep: no second call
    eng.update_weights([("model.norm.weight", torch.ones(4))])
    # the prefix cache holds KV of the old weights: dropped after every push
    assert log == ["sleep", "wake_up", "reload", "reset_prefix_cache"] and not eng.sleeping
    eng.sleep_mode = False
    eng.sleep()  # sleep mode off: sleep() is a no-op
    assert log[-1] == "reset_prefix_cache"


@pytest.mark.skipif(torch.cuda.is_available(), reason="the check is for machines without a GPU")
def test_sleep_mode_without_a_gpu_names_the_setting():
    from rlreason.rollout.vllm import VLLMEngine

    with pytest.raises(ValueError, match="rollout.vllm_sleep_mode=true needs a CUDA GPU"):
        VLLMEngine("unused", None, sleep_mode=True)


def test_trainer_pushes_after_every_step_before_sampling(tiny_recipe):
    """Order of engine calls over two steps: push, generate, sleep; the engine never
    samples from weights older than the last optimizer step."""
    from rlreason.rollout.hf import HFEngine
    from rlreason.sharding import inference_copy
    from rlreason.trainer import build_run, rl_step

    run = build_run(tiny_recipe("algo.skip_zero_advantage=false"), log=lambda s: None)
    events: list[str] = []

    class Recording(HFEngine):
        def update_weights(self, named):
            events.append("push")
            super().update_weights(named)

        def generate(self, *a, **k):
            stale = any(not torch.equal(p, q) for p, q in zip(self.model.parameters(), run.policy.parameters()))
            events.append("generate-stale" if stale else "generate")
            return super().generate(*a, **k)

        def sleep(self):
            events.append("sleep")

    run.engine = Recording(inference_copy(run.policy, run.accelerator), run.tokenizer, shares_module=False)
    for _ in range(2):
        rl_step(run)
    assert events == ["push", "generate", "sleep"] * 2


def test_tensor_parallel_groups_are_consecutive_blocks_that_divide_the_world():
    from rlreason.rollout.vllm import tensor_parallel_groups

    assert tensor_parallel_groups(4, 2) == [[0, 1], [2, 3]]
    assert tensor_parallel_groups(2, 1) == [[0], [1]]
    with pytest.raises(ValueError, match=r"rollout.vllm_tensor_parallel_size=2 must divide .* \(3\)"):
        tensor_parallel_groups(3, 2)


def _tp_rank(rank: int, port: int, out) -> None:
    import torch.distributed as dist

    from rlreason.rollout.vllm import generate_in_group

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    seen = []

    def engine(flat):  # what the shared engine is asked, and an answer per prompt
        seen.append(flat)
        return [[f"completion of {p}"] for p in flat]

    mine = [[[1, 2], [3]], [[4, 5, 6]]][rank]
    out.put((rank, seen, generate_in_group(mine, dist.group.WORLD, engine)))
    dist.destroy_process_group()


def test_ranks_of_one_tensor_parallel_engine_submit_the_same_requests_and_keep_their_share():
    import torch.multiprocessing as mp

    from rlreason.rollout.transfer import free_port

    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    port = free_port()
    procs = [ctx.Process(target=_tp_rank, args=(r, port, q)) for r in range(2)]
    for p in procs:
        p.start()
    got = dict((r, (seen, share)) for r, seen, share in (q.get(timeout=60) for _ in procs))
    for p in procs:
        p.join(timeout=30)
    everything = [[1, 2], [3], [4, 5, 6]]
    assert got[0][0] == got[1][0] == [everything]  # both ranks asked for the same thing
    assert got[0][1] == [["completion of [1, 2]"], ["completion of [3]"]]
    assert got[1][1] == [["completion of [4, 5, 6]"]]
