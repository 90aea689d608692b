"""Typed recipe schema: a recipe YAML is the whole record of an experiment.

Every knob is a pydantic field with a default and a one-line description, so the schema is
also the reference documentation (`rlreason config-reference` prints it). Unknown keys are
rejected with the nearest valid names, because a silently ignored typo (`algo.bta`) wastes
a GPU-day. Names follow TRL's GRPOConfig where one exists.
"""
from __future__ import annotations

import difflib
from pathlib import Path
from typing import Any, Literal, get_args, get_origin

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from .algos import ESTIMATORS, LOSSES, register_estimator, register_loss
from .registry import BACKENDS, ENVIRONMENTS, REWARDS, SFT_LOSSES, Registry, check_name
from .types import SamplingParams

_REGISTRIES: dict[str, Registry] = {"backends": BACKENDS, "sft_losses": SFT_LOSSES, "rewards": REWARDS,
                                     "environments": ENVIRONMENTS}


def _reward_name(v: str | None) -> str | None:
    """A registered reward name (typos name the nearest); `module:function` and `trl:NAME`
    pass here and are imported when the run is built, where rewards/registry.py keeps the
    import error as the cause and trl is imported only if used."""
    return v if v is None or ":" in v else REWARDS.check(v)


def registered(kind: str) -> list[str]:
    """The names a registry-backed field accepts, in registration order: losses from algos
    (pure tensor code, importable from here), the others from registry.py (implementations
    above this layer, imported on use)."""
    if kind == "losses":
        return list(LOSSES)
    if kind == "estimators":
        return list(ESTIMATORS)
    return _REGISTRIES[kind].names()


class ConfigError(ValueError):
    """A recipe or override that cannot be used; the message names the field to fix."""


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class LoraConfig(_Section):
    enabled: bool = Field(False, description="Train LoRA adapters (peft) instead of full weights.")
    r: int = Field(16, gt=0, description="LoRA rank.")
    alpha: int = Field(32, gt=0, description="LoRA alpha (scaling = alpha / r).")
    dropout: float = Field(0.0, ge=0, lt=1, description="Dropout on the LoRA path.")
    target_modules: list[str] | str = Field(
        "all-linear", description="Module names to adapt, or 'all-linear'."
    )


class TinyModelConfig(_Section):
    """A small Llama built locally from a config: the no-download default."""

    num_layers: int = Field(3, gt=0, description="Transformer layers.")
    hidden_size: int = Field(128, gt=0, description="Hidden size.")
    intermediate_size: int = Field(384, gt=0, description="MLP inner size.")
    num_heads: int = Field(4, gt=0, description="Attention heads.")
    warmstart_steps: int = Field(
        450, ge=0, description="Supervised steps on the synthetic task before RL (cached); with "
        "warmstart_target_accuracy, the most it may take."
    )
    warmstart_target_accuracy: float | None = Field(
        None, gt=0, le=1, description="Stop the warm-start once sampled accuracy (temperature 1) on 256 "
        "probe problems reaches this: the starting point is then set by what the model can do, not by a "
        "step count whose outcome varies with the CPU's float rounding."
    )
    warmstart_check_every: int = Field(
        10, gt=0, description="Warm-start steps between accuracy probes (and progress lines)."
    )
    warmstart_batch_size: int = Field(64, gt=0, description="Sequences per warm-start step.")
    warmstart_lr: float = Field(1e-3, gt=0, description="Warm-start learning rate.")
    seed: int = Field(0, description="Seed of the initialisation and the warm-start data.")
    warmstart_data: dict[str, Any] = Field(
        default_factory=dict, description="Overrides of data.synthetic for the warm-start data "
        "(e.g. {difficulty: 2, carries: none}): warm-start on easy problems, train on hard."
    )


class SkillSpec(_Section):
    path: str = Field(..., description="Skill vector folder (`rlreason skill extract`).")
    scale: float = Field(1.0, description="lambda in theta + lambda * v.")
    modules: list[str] | None = Field(None, description="Only tensors whose names contain these.")


class ModelConfig(_Section):
    name_or_path: str = Field(
        "tiny",
        description="Hub id or local folder for from_pretrained; 'tiny' builds a small local "
        "Llama warm-started on the synthetic task.",
    )
    tokenizer: str | None = Field(None, description="Tokenizer id/path (default: the model's).")
    dtype: Literal["float32", "bfloat16", "float16", "auto"] = Field(
        "float32", description="Parameter dtype of the policy."
    )
    attn_implementation: str | None = Field(
        None, description="transformers attn_implementation (e.g. sdpa, flash_attention_2)."
    )
    gradient_checkpointing: bool = Field(False, description="Trade compute for activation memory.")
    lora: LoraConfig = Field(default_factory=LoraConfig)
    tiny: TinyModelConfig = Field(default_factory=TinyModelConfig)
    skills: list[SkillSpec] = Field(
        default_factory=list, description="Skill vectors added to the weights when the model loads."
    )


class SyntheticConfig(_Section):
    task: Literal["addition", "addition3", "subtraction", "sum_words", "multiplication"] = Field(
        "addition", description="Synthetic task: addition ('47+85='), addition3 ('47+85+12='), "
        "subtraction ('85-47=', a >= b) or sum_words ('sum of 47 and 85 ='), answers least-"
        "significant digit first; multiplication ('123*45=' -> '#### 5535', for tools) "
        "(rlreason.data.synthetic)."
    )
    difficulty: int = Field(2, ge=1, le=12, description="Difficulty level (digits per operand).")
    min_difficulty: int | None = Field(
        None, ge=1, description="If set, mix levels min_difficulty..difficulty uniformly."
    )
    operator: str = Field(
        "+", min_length=1, description="Operator symbol in the prompt (another 'format' of the task)."
    )
    carries: Literal["any", "none", "some", "units_only", "top_only", "not_units"] = Field(
        "any", description="Keep problems by carries: none, at least one, only out of the lowest "
        "column, only out of the highest, none out of the lowest."
    )
    tool_calls: bool = Field(
        False, description="multiplication: oracle solutions call the calculator "
        "('<calculator>123*45</calculator><result>5535</result>#### 5535'), so the tiny model's warm "
        "start shows the call format (env.name: tools).")
    num_train: int = Field(2000, gt=0, description="Training problems generated.")
    num_eval: int = Field(128, ge=0, description="Held-out problems generated.")
    seed: int = Field(1234, description="Seed of the generated problems.")


class ReasoningGymConfig(_Section):
    """`data.source: reasoning_gym:<task>`: how many problems, which seed, the task's config."""

    size: int = Field(2000, gt=0, description="Training problems generated.")
    eval_size: int = Field(128, ge=0, description="Held-out problems generated (another seed; not in training).")
    seed: int = Field(1234, description="Seed of the generated problems.")
    config: dict[str, Any] = Field(
        default_factory=dict, description="The task's own config fields (e.g. basic_arithmetic: {min_terms: 2, "
        "max_terms: 2}); see reasoning-gym's task list."
    )


class RowFields(_Section):
    """Which fields of a dataset row hold what: shared by a recipe's `data` section and an
    evaluation suite's `fields` block, so both read rows the same way (data.loaders.FieldMap)."""

    id_key: str | None = Field(None, description="Row field holding a unique id (default: '<source>-<index>').")
    prompt_key: str = Field("prompt", description="Row field holding the problem text.")
    messages_key: str | None = Field(None, description="Row field holding a chat message list.")
    answer_key: str | None = Field(
        "answer", description="Row field holding the reference answer; null: data without labels (train with a "
        "label-free reward: majority_vote, urpa).")
    solution_key: str | None = Field(None, description="Row field holding a worked (oracle) solution.")
    answer_extractor: Literal["none", "gsm8k", "boxed"] = Field(
        "none", description="How to cut the final answer out of the answer field."
    )


class DataConfig(RowFields):
    source: str = Field(
        "synthetic",
        description="'synthetic', 'reasoning_gym:<task>' (reasoning-gym's generator and scorer), a local "
        ".jsonl/.parquet file, or a hub dataset id ('openai/gsm8k:main' selects the config 'main').",
    )
    split: str = Field("train", description="Split of a hub dataset.")
    eval_source: str | None = Field(
        None, description="Held-out file/hub id; default: synthetic held-out or eval_fraction."
    )
    eval_split: str = Field("test", description="Split of the held-out hub dataset.")
    eval_fraction: float = Field(
        0.0, ge=0, lt=1, description="Fraction of the training rows held out when no eval_source."
    )
    limit: int | None = Field(None, gt=0, description="Keep only the first N training rows.")
    template: Literal["auto", "chat", "plain"] = Field(
        "auto", description="Prompt building: tokenizer chat template, plain format, or auto."
    )
    plain_template: str = Field("{prompt}", description="Format string for template=plain.")
    system_prompt: str | None = Field(None, description="System message for chat templates.")
    max_prompt_length: int = Field(512, gt=0, description="Prompts longer than this are dropped.")
    synthetic: SyntheticConfig = Field(default_factory=SyntheticConfig)
    reasoning_gym: ReasoningGymConfig = Field(default_factory=ReasoningGymConfig)


class RewardSpec(_Section):
    name: str = Field(..., description="Registered reward name, 'module:function' or 'trl:NAME' (trl.rewards).",
                      json_schema_extra={"registry": "rewards"})
    weight: float = Field(1.0, description="Weight in the summed reward.")
    timeout_s: float = Field(10.0, gt=0, description="Per-sample time bound.")
    kwargs: dict[str, Any] = Field(default_factory=dict, description="Extra keyword arguments.")
    max_timeout_fraction: float = Field(
        0.5, ge=0, le=1, description="Stop the run when more than this fraction of the reward's calls "
        "in one step time out (each scores 0.0); 1 never stops.")
    api: Literal["auto", "rlreason", "trl"] = Field(
        "auto", description="Calling convention: rlreason's fn(completion, problem, **kwargs), or TRL "
        "GRPOTrainer's fn(prompts, completions, **columns) -> list; auto: trl for 'trl:NAME' (trl.rewards)."
    )
    trl_completions: Literal["messages", "text"] = Field(
        "messages", description="api trl: completions as one-message lists (TRL's conversational form, "
        "what trl.rewards index) or plain strings."
    )

    @field_validator("name")
    @classmethod
    def _registered_name(cls, v: str) -> str:
        return _reward_name(v)


class RolloutConfig(_Section):
    backend: str = Field(
        "hf", description="Generation engine: hf (in-process), vllm (colocated), server (`rlreason serve`), "
        "or your own 'module:factory'.", json_schema_extra={"registry": "backends"},
    )

    @field_validator("backend")
    @classmethod
    def _registered_backend(cls, v: str) -> str:
        return BACKENDS.check(v)
    temperature: float = Field(1.0, gt=0, description="Sampling temperature.")
    top_p: float = Field(1.0, gt=0, le=1, description="Nucleus sampling mass.")
    max_completion_length: int = Field(64, gt=0, description="Maximum new tokens per completion.")
    min_completion_length: int = Field(
        0, ge=0, description="Minimum new tokens: neither EOS, stop tokens nor stop strings end a "
        "completion before this many (vLLM's min_tokens, transformers' min_new_tokens). Sampler "
        "log-probs are those of the constrained distribution (vLLM's processed log-probs), so "
        "algo.importance_sampling corrects for it."
    )
    stop: list[str] = Field(
        default_factory=list, description="Stop strings: a completion ends once its text contains one "
        "(the string stays in the completion); also in evaluation."
    )
    batch_size: int = Field(256, gt=0, description="Sequences decoded together by the hf backend.")
    async_steps: int = Field(
        0, ge=0, description="Asynchronous rollouts: generate the batches of the next N steps while this "
        "one trains (samples at most N optimizer steps old, importance-corrected); 0: synchronous. Needs a "
        "backend that generates apart from the trainer (server).")
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = Field(
        "auto", description="hf backend: sample from a copy of the weights in this dtype, refreshed every "
        "step (auto: from the trainer's own module). Mismatch is corrected by algo.importance_sampling."
    )
    vllm_gpu_memory_utilization: float = Field(
        0.3, gt=0, le=1, description="GPU memory fraction for a colocated vLLM engine."
    )
    vllm_sleep_mode: bool = Field(
        False, description="Free vLLM's GPU memory while the trainer runs (vLLM sleep mode; GPU only)."
    )
    vllm_dtype: str = Field("auto", description="vLLM weight dtype (auto, bfloat16, float32).")
    vllm_max_model_len: int | None = Field(
        None, gt=0, description="vLLM context length (default: max prompt + completion length)."
    )
    vllm_tensor_parallel_size: int = Field(
        1, ge=1, description="vLLM tensor parallel size; under accelerate launch, consecutive blocks of "
        "this many processes share one engine (must divide the process count).")
    server_url: str = Field("http://127.0.0.1:8000", description="backend=server: where `rlreason serve` listens.")
    server_timeout_s: float = Field(600.0, gt=0, description="backend=server: wait this long for the server.")
    server_api_key: str | None = Field(
        None, description="backend=server: the server's --api-key (default: env RLREASON_API_KEY).")
    server_transfer_host: str | None = Field(
        None, description="backend=server: this trainer's address as the server sees it (default: found).")

    @model_validator(mode="after")
    def _min_within_max(self):
        if self.min_completion_length > self.max_completion_length:
            raise ValueError(f"rollout.min_completion_length ({self.min_completion_length}) exceeds "
                             f"rollout.max_completion_length ({self.max_completion_length})")
        return self

    def sampling(self, **overrides: Any):
        """The SamplingParams every rollout of a run uses (training, hardness probes,
        evaluation with its own temperature and length as overrides)."""
        sp = {"temperature": self.temperature, "top_p": self.top_p,
              "max_tokens": self.max_completion_length, "stop": tuple(self.stop), **overrides}
        # an evaluation with a shorter length limit keeps the minimum within it
        sp.setdefault("min_tokens", min(self.min_completion_length, sp["max_tokens"]))
        return SamplingParams(**sp)


class EnvConfig(_Section):
    """Multi-turn rollouts (rollout/environment.py): the model acts in an environment, e.g.
    calls tools; only its own tokens are trained on."""

    name: str | None = Field(
        None, description="Environment: tools (calculator, python), your own 'module:Class', or null "
        "(one completion per prompt).", json_schema_extra={"registry": "environments"},
    )
    kwargs: dict[str, Any] = Field(
        default_factory=dict, description="The environment's own settings; tools: {tools: [calculator], "
        "format: auto|tags|chat, tool_kwargs: {python: {timeout_s: 5, memory_mb: 512}}}.")
    max_turns: int = Field(4, gt=0, description="Model turns per episode; an episode still calling tools "
                           "after the last one is truncated.")
    max_total_tokens: int = Field(
        512, gt=0, description="Tokens after the prompt per episode, model turns and inserted observations "
        "together (rollout.max_completion_length bounds each turn); reaching it truncates the episode.")

    @field_validator("name")
    @classmethod
    def _registered_env(cls, v: str | None) -> str | None:
        return v if v is None else ENVIRONMENTS.check(v)


class AlgoConfig(_Section):
    loss_type: str = Field(
        "dapo", description="Policy loss: how token terms are aggregated (and GSPO's ratio).",
        json_schema_extra={"registry": "losses"},
    )

    @field_validator("loss_type")
    @classmethod
    def _registered_loss(cls, v: str) -> str:
        return check_name(v, registered("losses"), what="loss", field="algo.loss_type",
                          add=lambda name, fn: register_loss(name, normalizer=getattr(fn, "normalizer", "step"))(fn),
                          how="add one with rlreason.algos.register_loss, or name yours 'module:function'")

    advantage_estimator: str = Field(
        "grpo", description="How rewards become advantages: grpo (group baseline, scale_rewards), rloo "
        "(leave-one-out mean), reinforce_pp (group mean out, whitened over the batch), or 'module:function'.",
        json_schema_extra={"registry": "estimators"},
    )

    @field_validator("advantage_estimator")
    @classmethod
    def _registered_estimator(cls, v: str) -> str:
        return check_name(v, registered("estimators"), what="advantage estimator", field="algo.advantage_estimator",
                          add=lambda name, fn: register_estimator(name)(fn),
                          how="add one with rlreason.algos.register_estimator, or name yours 'module:function'")

    num_generations: int = Field(8, ge=2, description="Completions per prompt (group size).")
    dynamic_sampling: bool = Field(
        False, description="DAPO: drop groups whose rewards are all equal and sample more prompts until the "
        "step has train.prompts_per_step informative groups (or dynamic_sampling_max_rounds is reached).")
    dynamic_sampling_max_rounds: int = Field(
        4, ge=1, description="Dynamic sampling: most sampling rounds per step (the first included).")
    top_entropy_quantile: float = Field(
        1.0, gt=0, le=1, description="Train only on this top fraction of completion tokens by entropy, per "
        "micro-batch ('forking tokens'; 1.0: every token).")
    sapo_temperature_pos: float = Field(1.0, gt=0, description="loss_type sapo: gate temperature where A > 0.")
    sapo_temperature_neg: float = Field(1.05, gt=0, description="loss_type sapo: gate temperature where A < 0.")
    beta: float = Field(0.0, ge=0, description="KL weight; 0 loads no reference model.")
    kl_estimator: Literal["k1", "k2", "k3"] = Field("k3", description="KL estimator.")
    epsilon: float = Field(0.2, gt=0, description="Lower clip range of the ratio.")
    epsilon_high: float | None = Field(None, gt=0, description="Upper clip (default: epsilon).")
    scale_rewards: Literal["group", "batch", "none"] = Field(
        "group", description="Divide advantages by the group std, the batch std, or not at all."
    )
    num_iterations: int = Field(1, ge=1, description="Optimisation passes per batch (mu).")
    skip_zero_advantage: bool = Field(
        True, description="Skip forward/backward of sequences whose advantage is 0 (exact when "
        "beta is 0 and loss_type is not bnpo; single process)."
    )
    importance_sampling: Literal["none", "token", "sequence"] = Field(
        "token", description="Truncated importance-sampling correction for sampler/trainer "
        "log-prob mismatch (vLLM), per token or per sequence."
    )
    importance_sampling_cap: float = Field(
        2.0, gt=0, description="Upper bound of the importance weight pi_trainer / pi_sampler."
    )
    mask_truncated_completions: bool = Field(
        False, description="Exclude completions that hit max_completion_length from the loss."
    )


class GuidanceConfig(_Section):
    """Guided exploration (POPE) on problems the policy never solves."""

    enabled: bool = Field(False, description="Guide hard problems with oracle-solution prefixes.")
    probe_k: int = Field(8, ge=1, description="Samples per problem when probing hardness.")
    probe_limit: int | None = Field(None, gt=0, description="Probe only the first N problems.")
    hardness_file: str | None = Field(
        None, description="Reuse an earlier run's hardness.json instead of probing."
    )
    prefix_mode: Literal["search", "fixed"] = Field(
        "search", description="Shortest working rung of `ladder`, or always fixed_fraction."
    )
    ladder: list[float] = Field(
        [0.125, 0.25], description="Prefix lengths tried, as fractions of the oracle solution."
    )
    fixed_fraction: float = Field(0.25, gt=0, le=1, description="Prefix length in fixed mode.")
    prefix_unit: Literal["tokens", "steps", "sentences"] = Field(
        "tokens", description="What the fractions count: tokens, lines, or sentences."
    )
    probe_samples: int = Field(4, ge=1, description="Samples per ladder rung in the search.")
    batch: Literal["twins", "mixed"] = Field(
        "twins", description="twins (the paper): prompts_per_step // 2 hard problems, each as a "
        "guided prompt and its unguided twin in separate groups (the training stream once none is "
        "left); mixed (ablation): guided_ratio guided prompts, the rest from the whole training set."
    )
    guided_ratio: float = Field(
        0.5, ge=0, le=1, description="batch=mixed: fraction of a batch's prompts that are guided hard problems."
    )
    style: Literal["auto", "prefill", "instruct"] = Field(
        "auto", description="Hint inside the user turn (instruct, the paper's), or as the start of "
        "the answer (prefill); auto: instruct for chat-template prompts, prefill for plain ones."
    )
    instruct_template: str = Field(
        "Here is a problem and the beginning of a solution. Study the partial solution, then "
        "continue from where it ends, reasoning step by step, and put the final answer in "
        "\\boxed{}.\n\nProblem: {prompt}\n\nPartial solution: {hint}",
        description="User turn for style=instruct ({prompt}, {hint}).",
    )
    refresh: bool = Field(
        True, description="Stop guiding a problem once its unguided group earns a reward."
    )


class SFTConfig(_Section):
    """Supervised fine-tuning (`rlreason sft`): plain cross-entropy or one-token rollout."""

    loss: str = Field("sft", description="Cross-entropy, OTR (arXiv 2509.26313), or your own 'module:function'.",
                      json_schema_extra={"registry": "sft_losses"})

    @field_validator("loss")
    @classmethod
    def _registered_sft_loss(cls, v: str) -> str:
        return SFT_LOSSES.check(v)

    otr_num_samples: int = Field(256, ge=1, description="OTR: candidate tokens sampled per position (K).")
    otr_temperature: float = Field(
        1.2, gt=0, description="OTR: sampling temperature tau (> 1 explores; the paper's value was not found)."
    )
    otr_beta: float = Field(
        -0.1, lt=1, description="OTR: reward of a candidate that is not the target (slightly negative: most stable)."
    )
    otr_closed_form: bool = Field(
        False, description="OTR: expected reward over the tempered distribution instead of samples."
    )


class PastConfig(_Section):
    """The PaST pipeline (`rlreason past`): SFT then RL on a source domain, the RL delta as a
    skill vector, SFT on a target domain, the vector added, both evaluated."""

    source_data: DataConfig = Field(default_factory=DataConfig, description="Source-domain data.")
    target_data: DataConfig = Field(default_factory=DataConfig, description="Target-domain data.")
    source_sft_steps: int = Field(100, ge=0, description="SFT steps on the source before RL.")
    rl_steps: int = Field(100, ge=1, description="GRPO steps on the source per round.")
    target_sft_steps: int = Field(50, ge=0, description="Light SFT steps on the target.")
    rounds: int = Field(
        1, ge=1, description="Iterative refinement rounds (the paper: 2 beat 1); round k trains on a "
        "fresh part of the source data (file data: the k-th of `rounds` disjoint slices; synthetic: a "
        "fresh seed).")
    scale: float = Field(1.0, description="lambda in theta_target + lambda * v (when `scales` is unset).")
    scales: list[float] | None = Field(
        None, min_length=1, description="Candidate lambdas: the one with the best validation accuracy "
        "(first on ties) is picked on a validation slice of the target's training rows, held out from "
        "target SFT; the test split is then scored once, with it. Unset: `scale`, no validation.")
    validation_fraction: float = Field(
        0.1, gt=0, lt=1, description="With `scales`: fraction of the target's training rows held out "
        "as the validation slice.")


class EvalConfig(_Section):
    every_steps: int = Field(0, ge=0, description="Evaluate every N steps (0: only at start/end).")
    num_problems: int = Field(128, ge=0, description="Held-out problems per evaluation.")
    n: int = Field(1, ge=1, description="Samples per problem (pass@k and maj@k for k <= n).")
    temperature: float = Field(0.0, ge=0, description="0 means greedy decoding.")
    max_new_tokens: int | None = Field(None, gt=0, description="Default: max_completion_length.")
    reward: str | None = Field(
        None, description="Reward that grades held-out answers (default: the first of `rewards`); set it when "
        "training label-free (majority_vote, urpa) to measure accuracy against the labels.",
        json_schema_extra={"registry": "rewards"})

    @field_validator("reward")
    @classmethod
    def _registered_reward(cls, v: str | None) -> str | None:
        return _reward_name(v)


class TrainConfig(_Section):
    output_dir: str = Field("runs/quickstart", description="Where metrics and checkpoints go.")
    max_steps: int = Field(100, gt=0, description="Optimizer steps.")
    prompts_per_step: int = Field(16, gt=0, description="Prompts per step (global batch).")
    micro_batch_size: int = Field(32, gt=0, description="Sequences per forward/backward.")
    packing: bool = Field(
        True, description="Pack sequences into rows with block-diagonal attention (sdpa, "
        "flash-attention): compute only on real tokens."
    )
    pack_shared_prompts: bool = Field(
        True, description="With packing and sdpa, completions of one prompt that fit in a row share "
        "one copy of it."
    )
    learning_rate: float = Field(1e-5, gt=0, description="Peak learning rate.")
    lr_scheduler: Literal["constant", "linear", "cosine"] = Field(
        "constant", description="Schedule after warmup."
    )
    warmup_steps: int = Field(0, ge=0, description="Linear warmup steps.")
    weight_decay: float = Field(0.0, ge=0, description="AdamW weight decay.")
    adam_beta1: float = Field(0.9, description="AdamW beta1.")
    adam_beta2: float = Field(0.99, description="AdamW beta2.")
    max_grad_norm: float = Field(1.0, gt=0, description="Gradient clipping norm.")
    seed: int = Field(0, description="Seeds data order, sampling and initialisation.")
    mixed_precision: Literal["no", "bf16", "fp16"] | None = Field(
        None, description="Autocast compute dtype (accelerate); keep model.dtype float32 with it. "
        "Unset: the accelerate launch config's, else no."
    )
    save_steps: int = Field(0, ge=0, description="Checkpoint every N steps (0: only at the end).")
    save_total_limit: int = Field(2, ge=1, description="Checkpoints kept on disk.")
    resume_from: str | None = Field(
        None, description="'latest' (the folder's own run) or a checkpoint folder to continue from."
    )
    overwrite_output_dir: bool = Field(
        False, description="Start fresh in a used output_dir: the previous run's checkpoints, final "
        "model and metrics there are deleted first (without it a used folder is refused)."
    )
    @field_validator("mixed_precision", mode="before")
    @classmethod
    def _yaml_no(cls, v: Any) -> Any:
        return "no" if v is False else v  # YAML reads a bare `no` as false

    log_every: int = Field(1, ge=1, description="Progress line every N steps when not a TTY.")
    report_to: list[Literal["tensorboard", "wandb", "trackio", "mlflow"]] = Field(
        default_factory=list, description="Experiment trackers that also get every metrics.jsonl row "
        "(accelerate's trackers; TensorBoard/trackio files under output_dir)."
    )
    push_to_hub: bool = Field(
        False, description="Upload final/ (model card included) to train.hub_model_id at the end; the Hub, "
        "the token and the id are checked before training starts."
    )
    hub_model_id: str | None = Field(None, description="Hub repo 'owner/name' for push_to_hub.")
    hub_private: bool = Field(True, description="Create the Hub repo private (push_to_hub).")
    plot: bool = Field(True, description="Write reward_curve.png at the end.")
    threads: int | None = Field(None, gt=0, description="torch CPU threads (default: torch's).")
    use_cpu: bool = Field(False, description="Train on the CPU even where a GPU is visible (TRL's use_cpu).")


class RecipeConfig(_Section):
    """A whole experiment."""

    model: ModelConfig = Field(default_factory=ModelConfig)
    data: DataConfig = Field(default_factory=DataConfig)
    rewards: list[RewardSpec] = Field(
        default_factory=lambda: [RewardSpec(name="math")], description="Summed rewards."
    )
    rollout: RolloutConfig = Field(default_factory=RolloutConfig)
    env: EnvConfig = Field(default_factory=EnvConfig)
    algo: AlgoConfig = Field(default_factory=AlgoConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    eval: EvalConfig = Field(default_factory=EvalConfig)
    guidance: GuidanceConfig = Field(default_factory=GuidanceConfig)
    sft: SFTConfig = Field(default_factory=SFTConfig)
    past: PastConfig = Field(default_factory=PastConfig)

    @field_validator("rewards")
    @classmethod
    def _some_reward(cls, v: list[RewardSpec]) -> list[RewardSpec]:
        if not v:
            raise ValueError("at least one reward is needed, e.g. [{name: math}]")
        return v

    @model_validator(mode="after")
    def _cross_checks(self) -> RecipeConfig:
        d = self.data
        if d.answer_key is None and self.eval.num_problems and d.source != "synthetic" \
                and not d.source.startswith("reasoning_gym:"):
            raise ValueError("data.answer_key is null, so the held-out problems have no labels to grade: set "
                             "eval.num_problems=0 (or keep labels and train with a label-free reward)")
        if self.rollout.async_steps:
            _check_async(self)
        if self.guidance.enabled and self.guidance.batch == "twins" and self.train.prompts_per_step < 2:
            raise ValueError("guidance.batch=twins needs train.prompts_per_step >= 2 (a guided prompt and "
                             f"its unguided twin), got {self.train.prompts_per_step}")
        return self

    def check_world(self, world_size: int) -> None:
        """Global batch semantics, checked before anything loads: train.prompts_per_step
        prompts per optimizer step over all processes (whole prompts on each), and vLLM's
        tensor-parallel blocks tiling the processes."""
        P, tp = self.train.prompts_per_step, self.rollout.vllm_tensor_parallel_size
        if P % world_size:
            up = (P // world_size + 1) * world_size
            raise ValueError(f"train.prompts_per_step={P} does not split over {world_size} processes "
                             f"(each must get whole prompts): use a multiple of {world_size}, e.g. {up}")
        if self.rollout.backend == "vllm" and world_size > 1 and world_size % tp:  # engines per block
            raise ValueError(f"rollout.vllm_tensor_parallel_size={tp} must divide the number of "
                             f"training processes ({world_size})")
        if self.rollout.async_steps and world_size > 1:
            raise ValueError(f"rollout.async_steps={self.rollout.async_steps} runs with one training process "
                             f"for now, got {world_size}; set rollout.async_steps=0 under accelerate launch")


def _check_async(cfg: RecipeConfig) -> None:
    """What asynchronous rollouts overlap with, and what they do not support yet."""
    r = cfg.rollout
    if r.backend != "server":
        raise ValueError(f"rollout.async_steps={r.async_steps} overlaps generation with training, which needs "
                         f"generation outside the trainer's process: rollout.backend=server (`rlreason serve` on "
                         f"other GPUs, nodes or cores); {r.backend} "
                         + ("generates in this process" if r.backend in ("hf", "vllm") else
                            "is not known to (it must record the policy version of each completion)"))
    if cfg.guidance.enabled or cfg.algo.dynamic_sampling:
        raise ValueError("rollout.async_steps does not support guidance.enabled or algo.dynamic_sampling yet "
                         "(both choose the next prompts from this step's rewards); set rollout.async_steps=0")


# ---------------------------------------------------------------- loading


def _section_fields(model: type[BaseModel], path: tuple[str, ...]) -> list[str]:
    """Valid key names at `path` (for suggestions)."""
    cls: Any = model
    for part in path:
        field = cls.model_fields.get(part)
        ann = getattr(field, "annotation", None)
        if not (isinstance(ann, type) and issubclass(ann, BaseModel)):
            return []
        cls = ann
    return list(cls.model_fields)


def explain_errors(err: ValidationError, root: type[BaseModel]) -> list[str]:
    """One line per problem of a YAML-backed pydantic model: the dotted key, what was wrong,
    and for an unknown key the nearest valid names (recipes and benchmark suites alike)."""
    lines = []
    for e in err.errors():
        loc = tuple(str(p) for p in e["loc"])
        dotted = ".".join(loc) or "top level"
        if e["type"] == "extra_forbidden":
            valid = _section_fields(root, loc[:-1])
            near = difflib.get_close_matches(loc[-1], valid, n=3, cutoff=0.5)
            hint = f"; did you mean {', '.join(near)}?" if near else ""
            where = ".".join(loc[:-1]) or "top level"
            lines.append(f"unknown key '{dotted}'{hint} (valid keys in {where}: {', '.join(valid)})")
        elif e["type"] == "missing":
            lines.append(f"missing required key '{dotted}'")
        else:
            msg = e["msg"].removeprefix("Value error, ")
            lines.append(f"'{dotted}': {msg} (got {e.get('input')!r:.120})")
    return lines


def _explain(err: ValidationError, source: str) -> ConfigError:
    return ConfigError(f"{source}: invalid recipe\n  " + "\n  ".join(explain_errors(err, RecipeConfig)))


def _parse_value(text: str) -> Any:
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return text


# data files a recipe may name relative to itself (dotted path in the recipe)
RECIPE_FILE_FIELDS = ("data.source", "data.eval_source", "past.source_data.source",
                      "past.source_data.eval_source", "past.target_data.source",
                      "past.target_data.eval_source", "guidance.hardness_file")
DATA_FILE_SUFFIXES = (".jsonl", ".json", ".parquet")  # local data files (recipes, suites, cards)


def resolve_recipe_paths(data: dict[str, Any], recipe: Path) -> None:
    """Make a recipe file's relative data paths relative to the file itself, as a suite
    file's are: the recipe then works from any working directory and from a fresh clone
    (`recipes/x.yaml` names `../data/gsm8k_train.jsonl`). A value that is neither an
    existing path nor file-like (no .jsonl/.json/.parquet suffix) is a hub id and stays;
    a file that does not exist stops here, naming the recipe, the field and the path
    looked at. Command-line overrides are not touched: they are relative to where you are."""
    for dotted in RECIPE_FILE_FIELDS:
        *parents, key = dotted.split(".")
        node: Any = data
        for part in parents:
            node = node.get(part) if isinstance(node, dict) else None
        value = node.get(key) if isinstance(node, dict) else None
        if not isinstance(value, str) or not value or value == "synthetic" or Path(value).is_absolute():
            continue
        candidate = (recipe.parent / value).resolve()
        file_like = key == "hardness_file" or Path(value).suffix.lower() in DATA_FILE_SUFFIXES
        if candidate.exists():
            node[key] = str(candidate)
        elif file_like:
            raise ConfigError(f"{recipe}: {dotted}: no file {value!r} (paths in a recipe are relative to "
                              f"the recipe's folder: looked at {candidate})")


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply `a.b.c=value` overrides (values parsed as YAML) to a nested dict."""
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r}: expected key=value, e.g. algo.beta=0.04")
        key, value = item.split("=", 1)
        parts = key.strip().split(".")
        node = data
        for p in parts[:-1]:
            nxt = node.setdefault(p, {})
            if not isinstance(nxt, dict):
                raise ConfigError(f"override {item!r}: '{p}' is not a section")
            node = nxt
        node[parts[-1]] = _parse_value(value)
    return data


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> RecipeConfig:
    """Read a recipe YAML (or the defaults when `path` is None) and apply overrides."""
    data: dict[str, Any] = {}
    source = "defaults"
    if path is not None:
        p = Path(path)
        source = str(p)
        if not p.is_file():
            raise ConfigError(f"recipe file not found: {p}")
        try:
            loaded = yaml.safe_load(p.read_text()) or {}
        except yaml.YAMLError as e:
            raise ConfigError(f"{p}: not valid YAML: {e}") from e
        if not isinstance(loaded, dict):
            raise ConfigError(f"{p}: expected a mapping of sections at the top level")
        data = loaded
        resolve_recipe_paths(data, p)
    apply_overrides(data, list(overrides or []))
    try:
        return RecipeConfig.model_validate(data)
    except ValidationError as e:
        raise _explain(e, source) from None


def dump_config(cfg: BaseModel, path: str | Path) -> None:
    """Write the resolved recipe (every value, defaults included)."""
    Path(path).write_text(yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False))


def _type_name(ann: Any) -> str:
    """Readable type for the reference table (no '|', which would split a markdown cell)."""
    args = get_args(ann)
    if get_origin(ann) is Literal:
        return " / ".join(f"`{a}`" for a in args)
    if get_origin(ann) is dict:
        return "mapping"
    if args and get_origin(ann) is not list:  # a union
        return " or ".join(_type_name(a) for a in args)
    if get_origin(ann) is list:
        return f"list of {_type_name(args[0])}"
    return "null" if ann is type(None) else getattr(ann, "__name__", str(ann))


def reference(model: type[BaseModel] = RecipeConfig, prefix: str = "") -> list[str]:
    """Markdown lines documenting every field: key, type, default, description."""
    out: list[str] = []
    for name, f in model.model_fields.items():
        ann = f.annotation
        key = f"{prefix}{name}"
        if isinstance(ann, type) and issubclass(ann, BaseModel):
            out.extend(reference(ann, key + "."))
            continue
        extra = f.json_schema_extra if isinstance(f.json_schema_extra, dict) else {}
        kind = " / ".join(f"`{n}`" for n in registered(extra["registry"])) if "registry" in extra \
            else _type_name(ann)
        default = f.get_default(call_default_factory=True)
        if f.is_required():
            out.append(f"| `{key}` | {kind} | (required) | {f.description or ''} |")
            continue
        if isinstance(default, BaseModel):
            default = default.model_dump()
        elif isinstance(default, list) and default and isinstance(default[0], BaseModel):
            default = [d.model_dump(exclude_defaults=True) for d in default]
        out.append(f"| `{key}` | {kind} | `{default!r}` | {f.description or ''} |")
        item = get_args(ann)[0] if get_origin(ann) is list and get_args(ann) else None
        if isinstance(item, type) and issubclass(item, BaseModel):  # fields of each list entry
            out.extend(reference(item, key + "[]."))
    return out
