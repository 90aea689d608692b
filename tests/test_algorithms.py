"""The algorithms practitioners reach for after GRPO, each checked by hand: advantage
estimators, CISPO and SAPO, forking tokens, DAPO's overlong penalty and dynamic sampling,
label-free rewards; then each option through the trainer."""
from __future__ import annotations

import json
import math
from types import SimpleNamespace

import pytest
import torch

from rlreason.algos import ESTIMATORS, LossInputs, policy_loss
from rlreason.algos.forking_tokens import top_entropy_mask
from rlreason.config import ConfigError, load_config, reference
from rlreason.rewards import RewardError, RewardFunction, compute_rewards, rewards_from_config
from rlreason.rewards.label_free import majority_vote_reward, urpa_reward
from rlreason.rollout.dynamic_sampling import Groups, dynamic_batch
from rlreason.types import Completion, Problem

REWARDS = torch.tensor([1.0, 0.0, 0.0, 1.0, 1.0, 1.0, 1.0, 0.0])  # two groups of 4


# ------------------------------------------------------------------ estimators


def test_rloo_subtracts_the_mean_of_the_other_samples():
    adv = ESTIMATORS["rloo"](REWARDS, 4, None)
    # group 1: 1 - (0+0+1)/3, 0 - (1+0+1)/3; group 2: 1 - (1+1+0)/3, 0 - 1
    want = [2 / 3, -2 / 3, -2 / 3, 2 / 3, 1 / 3, 1 / 3, 1 / 3, -1.0]
    assert adv.tolist() == pytest.approx(want)


def test_reinforce_pp_centres_per_group_then_whitens_over_the_batch():
    adv = ESTIMATORS["reinforce_pp"](REWARDS, 4, None)
    # centred: [.5, -.5, -.5, .5, .25, .25, .25, -.75]; mean 0; unbiased std sqrt(1.75 / 7) = .5
    assert adv.tolist() == pytest.approx([1, -1, -1, 1, 0.5, 0.5, 0.5, -1.5], abs=1e-6)


def test_grpo_estimator_is_the_group_baseline_with_scale_rewards():
    cfg = SimpleNamespace(scale_rewards="none")
    assert ESTIMATORS["grpo"](REWARDS, 4, cfg).tolist() == pytest.approx([.5, -.5, -.5, .5, .25, .25, .25, -.75])


def test_estimators_are_a_validated_registry():
    assert load_config(None, ["algo.advantage_estimator=rloo"]).algo.advantage_estimator == "rloo"
    with pytest.raises(ConfigError, match=r"'rlo' is not a registered advantage estimator.*did you mean rloo"):
        load_config(None, ["algo.advantage_estimator=rlo"])
    line = next(ln for ln in reference() if "`algo.advantage_estimator`" in ln)
    assert "`grpo` / `rloo` / `reinforce_pp`" in line


# ------------------------------------------------------------------ CISPO and SAPO

LOGP = torch.tensor([[-1.0, -2.0], [-0.5, -1.5]])
OLD = torch.tensor([[-1.5, -2.0], [-0.5, -1.0]])  # ratios e^.5, 1; 1, e^-.5
ADV = torch.tensor([1.0, -2.0])


def _x(logp):
    return LossInputs(logp=logp, old_logp=OLD, advantages=ADV, mask=torch.ones(2, 2), num_sequences=2,
                      num_tokens=4)


def _algo(loss_type, **kw):
    return load_config(None, [f"algo.loss_type={loss_type}", *(f"algo.{k}={v}" for k, v in kw.items())]).algo


def test_cispo_caps_a_stopped_weight_and_keeps_every_token_gradient():
    logp = LOGP.clone().requires_grad_(True)
    loss, m = policy_loss(_x(logp), _algo("cispo", epsilon_high=0.2))
    w = [[min(math.exp(0.5), 1.2), 1.0], [1.0, math.exp(-0.5)]]  # no lower bound
    adv = [1.0, -2.0]
    want = -sum(w[b][t] * adv[b] * float(LOGP[b, t]) for b in range(2) for t in range(2)) / 4
    assert float(loss.detach()) == pytest.approx(want)
    loss.backward()
    grad = [[-w[b][t] * adv[b] / 4 for t in range(2)] for b in range(2)]  # the weight is a constant
    assert logp.grad.flatten().tolist() == pytest.approx([g for row in grad for g in row])
    assert m["clip_high"] == pytest.approx(0.25)  # one token of four past the cap


def test_sapo_is_a_smooth_gate_with_the_policy_gradient_on_policy():
    logp = LOGP.clone().requires_grad_(True)
    loss, _ = policy_loss(_x(logp), _algo("sapo"))  # tau 1.0 for A > 0, 1.05 for A < 0
    r = [[math.exp(0.5), 1.0], [1.0, math.exp(-0.5)]]
    tau = [1.0, 1.05]
    adv = [1.0, -2.0]
    sig = lambda z: 1 / (1 + math.exp(-z))  # noqa: E731
    want = -sum(sig(tau[b] * (r[b][t] - 1)) * 4 / tau[b] * adv[b] for b in range(2) for t in range(2)) / 4
    assert float(loss.detach()) == pytest.approx(want)
    loss.backward()
    # d/dlogp of f(r) = sigmoid(tau (r - 1)) 4 / tau is 4 s (1 - s) r: exactly r = 1 gives 1
    grad = [[-4 * sig(tau[b] * (r[b][t] - 1)) * (1 - sig(tau[b] * (r[b][t] - 1))) * r[b][t] * adv[b] / 4
             for t in range(2)] for b in range(2)]
    assert logp.grad.flatten().tolist() == pytest.approx([g for row in grad for g in row])
    assert logp.grad[0, 1] == pytest.approx(-1.0 / 4)  # on-policy token: the plain policy gradient


# ------------------------------------------------------------------ forking tokens


def test_top_entropy_mask_keeps_the_top_quantile_of_live_tokens():
    ent = torch.tensor([[0.1, 0.9, 0.5], [0.3, 0.7, 5.0]])
    mask = torch.tensor([[1.0, 1.0, 1.0], [1.0, 1.0, 0.0]])  # the 5.0 is padding: not counted
    kept = top_entropy_mask(ent, mask, 0.4)  # threshold: the 0.6 quantile of .1 .3 .5 .7 .9 = .58
    assert kept.tolist() == [[0.0, 1.0, 0.0], [0.0, 1.0, 0.0]]
    assert torch.equal(top_entropy_mask(ent, mask, 1.0), mask)


# ------------------------------------------------------------------ rewards

P = Problem(id="p", prompt="q", answer="")


def test_overlong_penalty_ramps_over_the_buffer():
    rf = RewardFunction("overlong", kwargs={"max_length": 8, "buffer": 4})
    assert [rf("x", P, n) for n in (3, 4, 6, 8, 9)] == [0.0, 0.0, -0.5, -1.0, -1.0]
    scores = compute_rewards(["a", "b"], [P, P], [(rf, 0.5)], lengths=[6, 2])
    assert scores.totals == [-0.25, 0.0]


def test_majority_vote_and_urpa_score_a_group_against_itself():
    assert majority_vote_reward(["12", "12", "13", ""], P) == [1.0, 1.0, 0.0, 0.0]
    assert majority_vote_reward(["1", "2"], P) == [1.0, 0.0]  # a tie: the first answer seen
    assert majority_vote_reward(["", " "], P) == [0.0, 0.0]
    c = 1 / (1 + math.sqrt(0.5) / 12)  # mean 11, population std sqrt(.5)
    assert urpa_reward(["10", "12", "11", "11"], P) == pytest.approx([0.0, 0.0, c, c])
    rf = RewardFunction("majority_vote")
    assert compute_rewards(["7", "7", "8", "3", "3", "3"], [P] * 6, [(rf, 1.0)], group_size=3).totals == \
        [1.0, 1.0, 0.0, 1.0, 1.0, 1.0]
    with pytest.raises(RewardError, match="scores whole groups"):
        compute_rewards(["7"], [P], [(rf, 1.0)])


def test_label_free_data_accepts_only_rewards_that_need_no_label():
    from rlreason.evaluation.grading import Grader

    specs = load_config(None, ["rewards=[{name: majority_vote}, {name: overlong, kwargs: {max_length: 8, "
                               "buffer: 2}}]", "data.answer_key=null"]).rewards
    assert [rf.name for rf, _ in rewards_from_config(specs, labelled=False)] == ["majority_vote", "overlong"]
    with pytest.raises(RewardError, match=r"answer_key is null.*\['exact_match'\]"):
        rewards_from_config(load_config(None, ["rewards=[{name: exact_match}]"]).rewards, labelled=False)
    for name in ("majority_vote", "overlong"):
        with pytest.raises(ValueError, match="cannot grade: grade with eval.reward"):
            Grader(name)


# ------------------------------------------------------------------ dynamic sampling


def _groups(rewards: list[list[float]], tag: str) -> Groups:
    probs = [Problem(id=f"{tag}{i}", prompt="q", answer="1") for i in range(len(rewards))]
    comps = [Completion(prompt_token_ids=[1], token_ids=[2], logprobs=[0.0], finish_reason="stop")
             for g in rewards for _ in g]
    flat = [x for g in rewards for x in g]
    return Groups(probs, comps, flat, {"r": list(flat)})


ONE = SimpleNamespace(num_processes=1, process_index=0)
CFG = SimpleNamespace(train=SimpleNamespace(prompts_per_step=4),
                      algo=SimpleNamespace(num_generations=2, dynamic_sampling_max_rounds=3))


def test_dynamic_sampling_keeps_informative_groups_until_the_batch_is_full():
    rounds = iter([_groups([[0, 1], [1, 1], [0, 0], [1, 0]], "b"), _groups([[0, 0], [1, 0], [1, 1], [0, 1]], "c")])
    first = _groups([[1, 1], [0, 1], [0, 0], [0, 0]], "a")
    batch, seen, m = dynamic_batch(first, lambda: next(rounds), CFG, ONE)
    assert [p.id for p in batch.problems] == ["a1", "b0", "b3", "c1"]  # the first 4 informative
    assert len(batch.completions) == 8 and batch.rewards == [0, 1, 0, 1, 1, 0, 1, 0]
    assert batch.raw["r"] == batch.rewards
    assert len(seen.problems) == 12 and m == {"dynamic/groups_sampled": 12, "dynamic/groups_kept": 4,
                                              "dynamic/rounds": 3}


def test_dynamic_sampling_stops_at_max_rounds_and_falls_back_when_nothing_is_informative():
    flat = lambda tag: _groups([[1, 1]] * 4, tag)  # noqa: E731
    draws = iter([flat("b"), flat("c")])
    first = flat("a")
    batch, seen, m = dynamic_batch(first, lambda: next(draws), CFG, ONE)
    assert batch is first and len(seen.problems) == 12 and m["dynamic/groups_kept"] == 0
    one = iter([_groups([[1, 1]] * 4, "b"), _groups([[1, 1]] * 4, "c")])
    batch, _, m = dynamic_batch(_groups([[0, 1], [1, 1], [1, 1], [1, 1]], "a"), lambda: next(one), CFG, ONE)
    assert [p.id for p in batch.problems] == ["a0"] and m["dynamic/rounds"] == 3  # trained: what was kept


def test_dynamic_sampling_agrees_across_ranks(monkeypatch):
    """Two ranks, simulated: each sees both ranks' kept groups (gathered in rank order),
    so both keep the same list, trim it to a multiple of 2 and take disjoint halves."""
    import rlreason.rollout.dynamic_sampling as ds

    per_rank = {0: [_groups([[0, 1], [1, 1]], "r0a"), _groups([[0, 1], [0, 1]], "r0b")],
                1: [_groups([[1, 1], [1, 1]], "r1a"), _groups([[1, 0], [0, 0]], "r1b")]}
    mine_by_round: dict = {}

    def fake_gather(mine, W):  # each call is one round; both ranks' lists in rank order
        rank, rnd = current["rank"], current["round"]
        mine_by_round[(rank, rnd)] = mine
        current["round"] += 1
        other = 1 - rank
        theirs = [g for g in (per_rank[other][rnd].group(i, 2) for i in range(2)) if max(g[2]) > min(g[2])]
        return mine + theirs if rank == 0 else theirs + mine

    monkeypatch.setattr(ds, "gather_all", fake_gather)
    out = {}
    for rank in (0, 1):
        current = {"rank": rank, "round": 0}
        draws = iter(per_rank[rank][1:])
        out[rank], _, m = dynamic_batch(per_rank[rank][0], lambda draws=draws: next(draws), CFG,
                                        SimpleNamespace(num_processes=2, process_index=rank))
        assert m["dynamic/groups_kept"] == 4 and m["dynamic/rounds"] == 2
    assert [p.id for p in out[0].problems] == ["r0a0", "r0b0"]  # kept: r0a0 | r0b0 r0b1 r1b0 -> 4
    assert [p.id for p in out[1].problems] == ["r0b1", "r1b0"]


# ------------------------------------------------------------------ through the trainer

OPTIONS = {
    "rloo": ["algo.advantage_estimator=rloo"],
    "reinforce_pp": ["algo.advantage_estimator=reinforce_pp"],
    "cispo": ["algo.loss_type=cispo", "algo.epsilon_high=4.0"],
    "sapo": ["algo.loss_type=sapo"],
    "forking_tokens": ["algo.top_entropy_quantile=0.2"],
    "dynamic_sampling": ["algo.dynamic_sampling=true"],
    "overlong": ["rewards=[{name: exact_match}, {name: overlong, kwargs: {max_length: 6, buffer: 2}}]"],
    "label_free": ["rewards=[{name: majority_vote}]", "eval.reward=exact_match"],
}


@pytest.mark.parametrize("name", sorted(OPTIONS))
def test_each_option_trains(tiny_recipe, name):
    from rlreason.trainer import train

    cfg = tiny_recipe(*OPTIONS[name], "train.max_steps=2", "algo.skip_zero_advantage=false")
    last = train(cfg, log=lambda s: None)
    assert math.isfinite(last["loss"]) and math.isfinite(last["grad_norm"]) and "eval/accuracy" in last
    if name == "dynamic_sampling":
        assert last["dynamic/rounds"] >= 1 and last["dynamic/groups_sampled"] == 4 * last["dynamic/rounds"]
    if name == "overlong":
        assert "rewards/overlong" in last and last["rewards/overlong"] <= 0


def test_dynamic_sampling_resumes_exactly_and_counts_every_prompt_drawn(tiny_recipe, tmp_path):
    from rlreason.trainer import train

    extra = ["algo.dynamic_sampling=true", "train.save_steps=2", "algo.dynamic_sampling_max_rounds=3"]
    train(tiny_recipe(*extra, f"train.output_dir={tmp_path / 'full'}"), log=lambda s: None)
    rows = [json.loads(x) for x in (tmp_path / "full" / "metrics.jsonl").read_text().splitlines()]
    rows = [r for r in rows if "reward" in r]
    state = json.loads(next((tmp_path / "full").rglob("step_000004/trainer_state.json")).read_text())
    assert state["data"]["position"] == sum(r["dynamic/groups_sampled"] for r in rows)  # no epoch wrap: 200 > 48
    part = tmp_path / "part"
    train(tiny_recipe(*extra, f"train.output_dir={part}"), log=lambda s: None, stop_after=3)
    train(tiny_recipe(*extra, f"train.output_dir={part}", "train.resume_from=latest"), log=lambda s: None)
    resumed = [r for r in (json.loads(x) for x in (part / "metrics.jsonl").read_text().splitlines()) if "reward" in r]
    for a, b in zip(rows, resumed):
        for key in ("reward", "loss", "dynamic/groups_sampled", "dynamic/groups_kept", "grad_norm"):
            assert a[key] == pytest.approx(b[key], rel=1e-6, abs=1e-9), (a["step"], key)
