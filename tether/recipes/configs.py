"""Typed configs, one per entry point, every field documented.

Values come, lowest priority first, from the defaults, a YAML ``--config`` file (any field, ``model``, ``data`` and
``output_dir`` included), then ``--set key=value`` and the command's own flags; a field given both as a flag and with
``--set`` (two different values) is refused rather than one silently winning. A wrong value is refused before any
work starts, with the option's name and the fix.
Each trainer's config subclasses ``TrainConfig`` (the options every ``tether train`` command shares) and is
defined next to the others here.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from tether.errors import TetherError


class TrainConfig(BaseModel):
    """The options every ``tether train`` command shares (same names everywhere)."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, protected_namespaces=())

    model: str = Field(description="The base model: a local Hugging Face folder (or a hub id when online).")
    output_dir: Path = Field(description="Where the trained model, its metadata, metrics and checkpoints go.")
    epochs: float = Field(1.0, gt=0, description="Passes over the training data.")
    max_steps: int | None = Field(None, gt=0, description="Stop after this many optimizer steps (overrides epochs).")
    batch_size: int = Field(8, ge=1, description="Examples per optimizer step, summed over all processes.")
    micro_batch_size: int | None = Field(
        None, ge=1, description="Examples per forward pass on one process; gradient accumulation makes up batch_size."
    )
    learning_rate: float = Field(5e-5, gt=0, lt=1, description="Peak learning rate of AdamW.")
    lr_schedule: str = Field("linear", pattern="^(constant|linear|cosine)$", description="constant, linear or cosine decay after warmup.")
    warmup_ratio: float = Field(0.0, ge=0, lt=1, description="Fraction of the steps spent warming the learning rate up.")
    weight_decay: float = Field(0.0, ge=0, description="AdamW weight decay.")
    max_grad_norm: float = Field(1.0, gt=0, description="Gradients are clipped to this global norm.")
    max_length: int = Field(512, ge=8, description="Max tokens of prompt+completion; the prompt's start is cut first.")
    seed: int = Field(0, description="Random seed for data order, initialization and sampling.")
    lora_r: int = Field(0, ge=0, description="LoRA rank; 0 trains all weights.")
    lora_alpha: float = Field(16.0, gt=0, description="LoRA scaling numerator (scale = alpha / r).")
    lora_dropout: float = Field(0.0, ge=0, lt=1, description="Dropout on the LoRA input.")
    lora_target_modules: list[str] | None = Field(None, description="Module names LoRA wraps; None lets peft choose for the architecture.")
    gradient_checkpointing: bool = Field(False, description="Recompute activations in the backward pass: less memory, ~30% slower.")
    torch_compile: bool = Field(
        False,
        description="Compile the model's repeated blocks with torch.compile (inductor, dynamic shapes; through accelerate's regional compilation): the first steps pay the compilation (tens of seconds on a CPU), later ones run faster on a GPU.",
    )
    bf16: bool = Field(False, description="bfloat16 mixed precision (on a GPU that has it).")
    logging_steps: int = Field(10, ge=1, description="Write metrics every this many optimizer steps.")
    save_steps: int | None = Field(None, ge=1, description="Checkpoint every this many steps (resume with resume=true).")
    resume: bool = Field(
        False,
        description="Continue from the last checkpoint in output_dir; refused, naming the difference, when the checkpoint is another run's (other model, data, step count or settings).",
    )
    overwrite: bool = Field(False, description="Start afresh in an output_dir that holds an earlier run: its model, metrics and checkpoints are deleted first.")
    mlflow: bool = Field(True, description="Also log metrics to the workspace's MLflow store when a workspace is found.")
    progress: bool = Field(True, description="Show a progress bar.")
    chat_template: bool | None = Field(
        None,
        description="Send plain-text prompts through the model's chat template as a user turn (true) or as they are (false); None: as the model's tether.json recorded, else true when the tokenizer has a template. Conversations always use the template; a tokenizer without one gets plain text.",
    )

    @model_validator(mode="after")
    def _check(self) -> TrainConfig:
        if self.micro_batch_size is not None and self.batch_size % self.micro_batch_size:
            raise ValueError(f"batch_size ({self.batch_size}) must be a multiple of micro_batch_size ({self.micro_batch_size})")
        if self.resume and self.overwrite:
            raise ValueError("resume continues the run in output_dir and overwrite deletes it: give one of them")
        return self


# The fields a resumed run may change: how it runs (memory, speed, logging, where caches go, how the result is
# saved), never what it computes. Every other field must equal the checkpoint's run, or resume is refused
# (tether.recipes.checkpoints.Checkpointer); a new field is therefore checked unless it is added here. model, data and prompts
# are checked by what they are (the model's fingerprint, the rows' digest), not by how they are spelled.
RESUME_MAY_CHANGE = frozenset({
    "output_dir", "resume", "overwrite", "progress", "mlflow", "logging_steps", "save_steps", "micro_batch_size",
    "gradient_checkpointing", "bf16", "merge", "ref_cache_dir", "ref_batch_size", "precompute_ref", "eval_batch_size",
    "eval_data", "max_tokens_per_forward", "normalize_data", "normalize_max_rows", "reward_batch_size", "sample_every",
    "num_samples", "sampler", "decoder", "cache", "share_prompts", "vllm_gpu_memory_utilization",
    "lm_head_chunk", "torch_compile",
    "model", "data", "prompts",
})


class RewardConfig(TrainConfig):
    """``tether train reward``: a reward model on preference pairs (Bradley-Terry) or ratings (regression)."""

    data: str = Field(description="Training rows: a file (.jsonl/.json/.parquet) or snapshot:NAME.")
    # None: chosen by the backbone's kind and size (tether.recipes.reward_selection.BACKBONE_DEFAULTS), said in one line.
    epochs: float | None = Field(None, gt=0, description="Passes over the training data. None: by backbone (1 for every kind and size today; see recipes/reward_selection.py).")
    batch_size: int | None = Field(None, ge=1, description="Examples per optimizer step, summed over all processes. None: by backbone (encoders under 100M parameters 16, else 8).")
    learning_rate: float | None = Field(
        None, gt=0, lt=1, description="Peak learning rate of AdamW. None: by backbone (encoders under 100M parameters 5e-5, larger 2e-5; decoders under 100M 5e-5, up to 3B 1e-5, larger 5e-6)."
    )
    max_length: int | None = Field(
        None, ge=8, description="Max tokens of prompt+completion; the prompt's start is cut first. None: by backbone (encoders under 100M parameters 256, else 512)."
    )
    objective: str = Field(
        "pairwise", pattern="^(pairwise|rating)$",
        description="pairwise: Bradley-Terry on prompt/chosen/rejected rows; rating: regression on prompt/completion/ratings rows, one head per aspect.",
    )
    use_margin: bool = Field(True, description="Use the rows' margin column (Llama 2 margin loss) when present.")
    use_weight: bool = Field(
        True, description="Use the rows' weight column when present: the pairwise loss is the weighted mean sum(w * l) / sum(w), a row without one counting 1 (a `tether data snapshot --votes reliability` snapshot weighs each vote by its annotator's reliability).",
    )
    ties: str = Field(
        "soft", pattern="^(soft|skip)$",
        description="Pairs marked tie: soft = Bradley-Terry with label 1/2 (pulls the two rewards together); skip = drop them.",
    )
    center_rewards_coef: float = Field(0.0, ge=0, description="Weight of the reward-centering loss mean((r_c + r_r)^2); 0.01 is typical.")
    ensemble: int = Field(1, ge=1, le=64, description="Ensemble size K: K heads on one backbone, each trained on its own bootstrap weights.")
    normalize_data: str | None = Field(
        None, description="Reference rows for reward normalization (file or snapshot:NAME; chosen or completion column). Default: the validation split's chosen completions as the kept checkpoint scored them (no extra pass; from 200 validation pairs), else the training rows' chosen completions."
    )
    normalize_max_rows: int | None = Field(
        256, ge=1,
        description="After training, score at most this many reference completions (a seeded random sample) for the normalization (256: the mean's standard error is about 0.06 std, the std's 4.4%); None: all of them (on 4,658 HH pairs with MiniLM on a CPU, minutes).",
    )
    eval_data: str | None = Field(None, description="Held-out rows evaluated after training (accuracy, margin, ECE in tether.json).")
    eval_fraction: float = Field(0.0, ge=0, lt=1, description="Hold out this fraction of the training rows (fixed by seed) for the final evaluation.")
    eval_batch_size: int = Field(32, ge=1, description="Sequences per forward pass when scoring (normalization, evaluation).")
    max_tokens_per_forward: int | None = Field(
        None, ge=16,
        description="Cap on padded tokens (chosen + rejected) in one forward pass: batches of long pairs are split into more passes (same result, lower peak memory).",
    )
    disable_dropout: bool = Field(True, description="Turn the backbone's dropout off (as TRL does for reward models; makes runs reproducible).")
    share_prompts: bool = Field(
        True,
        description="Decoder backbones: one row per pair, the tokens chosen and rejected share at their start (the prompt) computed once and each answer attending to them alone (same rewards; 1.48x fewer tokens on HH-RLHF). Off, or an encoder, or an attention that takes no custom mask (flash-attention): two rows per pair.",
    )
    group_by_length: bool = Field(
        False,
        description="Batch pairs of similar length together: a little less padding than the default, but each step then sees pairs of one length, and on HH-RLHF it looked like it cost held-out accuracy (docs/benchmarks.md; not settled). Off: plain shuffled batches, each cut into length-sorted forward passes (same gradient).",
    )

    validation_fraction: float | None = Field(
        None, ge=0, lt=1,
        description="Carve this fraction of the training prompts (seeded; all pairs of a prompt on one side, never in training) as a validation split, evaluated during training; the checkpoint with the best validation accuracy is kept. None: 0.1 when there are at least 2,000 training pairs (a smaller split is too noisy to choose by), else no split; 0: none.",
    )
    validation_data: str | None = Field(None, description="Validation rows given as a file or snapshot:NAME instead of a carved split (pairwise only).")
    validation_steps: int | None = Field(None, ge=1, description="Evaluate the validation split every this many optimizer steps (and at the last). None: four times per epoch.")
    early_stopping_patience: int = Field(
        3, ge=0, description="Stop after this many validation evaluations in a row without a new best accuracy (0: never stop early; the best checkpoint is kept either way)."
    )
    length_head: bool = Field(
        False,
        description="ODIN (Chen et al. 2024): train a second head on the reward's sum with the quality head, pushed to correlate with the completion's length while the quality head is decorrelated from it (and their weights kept orthogonal); the length head is dropped at saving, so scores come from the quality head alone. Pairwise only.",
    )
    length_correction: bool = Field(
        False,
        description="A length-controlled reward: after training, take the median over pairs of the reward difference per difference in log(1 + completion tokens) (over the validation pairs, else a sample of training pairs) and subtract slope x log(1 + tokens) at scoring time: the longer answer then has the higher reward in half of those pairs, so length is not paid for (tether.recipes.reward_length). Assumes those pairs' labels do not favour length. Pairwise only.",
    )
    length_loss_coef: float = Field(1.0, ge=0, description="length_head: weight of the correlation loss |rho(r_Q, L)| - rho(r_L, L).")
    orthogonal_loss_coef: float = Field(1.0, ge=0, description="length_head: weight of the orthogonality loss |w_Q . w_L| between the two heads' weight vectors.")

    @model_validator(mode="after")
    def _check(self) -> RewardConfig:  # TrainConfig's checks, the batch ones once batch_size is known (None: by backbone)
        if self.batch_size is not None:
            return TrainConfig._check(self)
        if self.resume and self.overwrite:
            raise ValueError("resume continues the run in output_dir and overwrite deletes it: give one of them")
        return self

    @model_validator(mode="after")
    def _check_reward(self) -> RewardConfig:
        if self.eval_data is not None and self.eval_fraction > 0:
            raise ValueError("give eval_data or eval_fraction, not both")
        if self.validation_data is not None and self.validation_fraction:
            raise ValueError("give validation_data or validation_fraction, not both")
        if self.objective == "rating" and (self.validation_fraction or self.validation_data or self.length_head or self.length_correction):
            raise ValueError("validation_fraction, validation_data, length_head and length_correction are for objective=pairwise")
        if self.length_correction and self.normalize_data is not None:
            raise ValueError("length_correction normalizes over the pairs its slope is fit on (the validation split, else a sample of training pairs): drop normalize_data")
        return self


class TokenTrainConfig(TrainConfig):
    """What the trainers of a dataset's tokens through the LM head share (SFT, DPO, KTO): data order, batching,
    the LM head in chunks, saving LoRA merged."""

    shuffle: bool = Field(True, description="Shuffle the data order each epoch (false keeps file order, e.g. to compare runs).")
    group_by_length: bool = Field(True, description="Batch rows of similar length together (less padding).")
    lm_head_chunk: int = Field(
        1024, ge=0,
        description="Score tokens through the LM head this many at a time: the (tokens x vocabulary) logits never exist at once, as in Liger's fused linear cross-entropy (same losses and gradients, less memory with a large vocabulary; not slower on SmolLM2, docs/benchmarks.md). 0: all scored tokens in one product.",
    )
    merge: bool = Field(False, description="With LoRA, save the merged full weights instead of the adapter.")


class SFTConfig(TokenTrainConfig):
    """``tether train sft``: supervised fine-tuning on prompt/completion or conversational rows."""

    data: str = Field(description="Training rows: a file (.jsonl/.json/.parquet) or snapshot:NAME (prompt/completion or messages).")
    completion_only_loss: bool = Field(True, description="Loss on the completion (assistant) tokens only; false trains on the prompt too.")
    packing: bool = Field(
        False,
        description="Pack several examples into one row without padding; positions restart and attention is blocked at each example's start, so examples never see each other.",
    )


class DPOConfig(TokenTrainConfig):
    """``tether train dpo``: DPO, IPO or cDPO on preference pairs, against a frozen reference model."""

    data: str = Field(description="Preference rows: a file (.jsonl/.json/.parquet; TRL or HH-RLHF style) or snapshot:NAME.")
    loss: str = Field("dpo", pattern="^(dpo|ipo|cdpo)$", description="dpo (Rafailov 2023), ipo (Azar 2023) or cdpo (DPO with label smoothing for noisy labels).")
    beta: float = Field(0.1, gt=0, description="KL strength: DPO's beta, IPO's tau. Larger keeps the policy nearer the reference.")
    label_smoothing: float = Field(0.0, ge=0, lt=0.5, description="cDPO's assumed probability that a label is flipped (only with loss=cdpo).")
    reference_model: str | None = Field(None, description="The frozen reference; default: the starting model (with LoRA: the model with its adapter disabled).")
    precompute_ref: bool = Field(
        True,
        description="Compute the reference log-probs once before training, in one pass, cached on disk; false computes them every step (LoRA: adapter disabled; else a second model in memory).",
    )
    ref_cache_dir: Path | None = Field(None, description="Where cached reference log-probs go; default: <workspace>/artifacts/cache/ref-logps, else ~/.cache/tether/ref-logps.")
    ref_batch_size: int | None = Field(None, ge=1, description="Pairs per forward pass when precomputing reference log-probs (default: the micro batch).")
    packing: bool = Field(
        False,
        description="Lay several pairs end to end in one row (each pair's prompt, chosen and rejected answers, none attending to another pair's) instead of one padded row per pair: no padding tokens, same log-probs.",
    )

    @model_validator(mode="after")
    def _check_dpo(self) -> DPOConfig:
        if self.loss == "cdpo" and self.label_smoothing == 0:
            raise ValueError("loss=cdpo needs label_smoothing > 0 (e.g. --set label_smoothing=0.1)")
        if self.loss != "cdpo" and self.label_smoothing > 0:
            raise ValueError(f"label_smoothing is cDPO's; use --loss cdpo (loss is {self.loss})")
        return self


class KTOConfig(TokenTrainConfig):
    """``tether train kto``: KTO on unpaired thumbs-up / thumbs-down rows, against a frozen reference model."""

    data: str = Field(description="Unpaired rows {prompt, completion, label: bool}, or preference pairs (each split into a desirable and an undesirable example, as TRL does; ties skipped): a file or snapshot:NAME.")
    beta: float = Field(0.1, gt=0, description="KL strength of the implicit reward (beta in the KTO paper).")
    desirable_weight: float = Field(1.0, gt=0, description="lambda_D: weight of desirable (thumbs-up) examples.")
    undesirable_weight: float = Field(
        1.0, gt=0, description="lambda_U: weight of undesirable examples; the paper keeps lambda_D n_D / (lambda_U n_U) in [1, 4/3]."
    )
    reference_model: str | None = Field(None, description="The frozen reference; default: the starting model (with LoRA: the model with its adapter disabled).")
    precompute_ref: bool = Field(
        True,
        description="Compute the reference log-probs once before training, in one pass, cached on disk; false computes them every step.",
    )
    ref_cache_dir: Path | None = Field(None, description="Where cached reference log-probs go; default: <workspace>/artifacts/cache/ref-logps, else ~/.cache/tether/ref-logps.")
    ref_batch_size: int | None = Field(None, ge=1, description="Examples per forward pass when precomputing reference log-probs (default: the micro batch).")


class OnlineRLConfig(TrainConfig):
    """What ``tether train ppo|grpo|rloo`` share: prompts, rewards, sampling and the clipped policy update.

    One *rollout* samples ``batch_size x num_minibatches`` completions (``group_size`` per prompt), scores them,
    then makes ``ppo_epochs`` passes over them in ``num_minibatches`` optimizer steps each: ``batch_size`` counts
    completions per optimizer step, as TRL's ``per_device_train_batch_size`` does. ``max_steps`` counts optimizer
    steps; ``epochs`` counts passes over the prompts.
    """

    prompts: str = Field(description="The prompts: a file (.jsonl/.json/.parquet rows with a 'prompt') or snapshot:NAME.")
    reward: list[str] = Field(
        min_length=1,
        description="Reward SPECs, summed: a reward-model folder, rules:FILE.yaml or py:FILE.py:FUNCTION, each optionally weighted as SPEC@W (see tether.recipes.reward_specs).",
    )
    group_size: int = Field(1, ge=1, description="Completions sampled per prompt.")
    max_new_tokens: int = Field(64, ge=1, description="Most tokens generated per completion (a completion stops earlier at EOS).")
    temperature: float = Field(1.0, gt=0, description="Sampling temperature; log-probs are recomputed with the logits divided by it.")
    top_p: float = Field(1.0, gt=0, le=1, description="Nucleus sampling: sample among the most likely tokens whose probabilities sum to top_p.")
    ppo_epochs: int = Field(1, ge=1, description="Passes over each rollout (PPO's epochs; GRPO's mu).")
    num_minibatches: int = Field(1, ge=1, description="Optimizer steps per pass; a rollout holds batch_size x num_minibatches completions.")
    clip_range: float = Field(0.2, gt=0, lt=1, description="PPO's epsilon: the probability ratio is clipped to [1 - eps, 1 + eps].")
    kl_coef: float = Field(0.05, ge=0, description="beta, the weight of KL(policy || reference); 0 skips the reference model.")
    reference_model: str | None = Field(
        None,
        description="The frozen reference of the KL term; default: the starting model. `tether loop` continues RL from the current policy and keeps the KL to the first (SFT) policy this way. Not with LoRA (the reference is then the policy with its adapter off).",
    )
    kl_estimator: str = Field("k1", pattern="^(k1|k2|k3)$", description="Per-token KL estimator (Schulman 2020): k1 = log ratio, k2 = its square / 2, k3 = exp(-log ratio) - 1 + log ratio.")
    aggregation: str = Field("token", pattern="^(token|sequence)$", description="Loss over tokens: token = mean over all completion tokens of the batch (DAPO); sequence = mean of per-completion means (GRPO paper).")
    missing_eos_penalty: float | None = Field(None, ge=0, description="Subtracted from the score of a completion that reached max_new_tokens without EOS (None: no penalty).")
    sampler: str = Field(
        "auto",
        pattern="^(auto|loop|hf|vllm)$",
        description="auto: loop (faster than hf on the CPU and on an H200, docs/benchmarks.md); loop: Tether's own sampling loop (tether.models.sampling.generate_loop: each prompt prefilled once per group, a fast KV-cached decoder for Llama-family models); hf: transformers generate; vllm: vLLM (GPU, `pip install vllm`), with truncated importance-sampling correction.",
    )
    decoder: str = Field("auto", pattern="^(auto|fast|hf)$", description="sampler=loop: the forward per new token. auto: the fast decoder (tether.models.kv_cache_llama) where it supports the model, else the model's own forward; fast: require it; hf: always the model's forward.")
    cache: str = Field(
        "auto",
        pattern="^(auto|static|dynamic)$",
        description="KV cache of HF generate (sampler=hf): static (preallocated; ~6x faster on GPU), dynamic, or auto = static on a GPU and dynamic on a CPU (where static is slower). Static falls back to dynamic, with a warning, where it fails.",
    )
    share_prompts: bool = Field(
        True,
        description="Policy and reference forward passes run each distinct prompt once and share its keys/values with the rows of its group (same log-probs and gradients, less work: U x P + B x R tokens instead of B x (P + R)). Off: one forward per whole row.",
    )
    is_cap: float = Field(2.0, gt=0, description="vLLM only: cap of the per-token importance weights exp(trainer - sampler log-prob).")
    vllm_gpu_memory_utilization: float = Field(0.3, gt=0, lt=1, description="vLLM only: fraction of GPU memory vLLM may take.")
    reward_batch_size: int = Field(32, ge=1, description="Completions per forward pass of a reward model.")
    sample_every: int = Field(10, ge=0, description="Every N rollouts append sample completions to samples.jsonl and print a table (0: never).")
    num_samples: int = Field(4, ge=1, description="Sample completions written each time.")
    merge: bool = Field(False, description="With LoRA, save the merged full weights instead of the adapter.")

    @model_validator(mode="before")
    @classmethod
    def _reward_as_list(cls, values: Any) -> Any:
        if isinstance(values, dict) and isinstance(values.get("reward"), str):
            values = {**values, "reward": [values["reward"]]}
        return values

    @model_validator(mode="after")
    def _check_online(self) -> OnlineRLConfig:
        if self.batch_size % self.group_size:
            raise ValueError(f"batch_size ({self.batch_size}) must be a multiple of group_size ({self.group_size}): it counts completions, prompts x group_size")
        if self.reference_model is not None and self.lora_r:
            raise ValueError("reference_model with LoRA: the reference is the policy with its adapter off; drop one of them")
        if self.max_new_tokens >= self.max_length:
            raise ValueError(f"max_new_tokens ({self.max_new_tokens}) must be below max_length ({self.max_length}), which also holds the prompt")
        return self


class PPOConfig(OnlineRLConfig):
    """``tether train ppo``: PPO with a learned critic (Ziegler et al. 2019; Huang et al. 2024, "The N+ Implementation
    Details of RLHF with PPO"). Per-token rewards are ``-kl_coef * KL_t`` plus the score on the last token."""

    ppo_epochs: int = Field(4, ge=1, description="Passes over each rollout.")
    kl_coef: float = Field(0.05, ge=0, description="Initial beta of the per-token KL penalty in the reward.")
    missing_eos_penalty: float | None = Field(1.0, ge=0, description="Subtracted from the score of a completion without EOS (Huang et al. 2024 detail 23); None: no penalty.")
    gamma: float = Field(1.0, gt=0, le=1, description="Discount of GAE.")
    lam: float = Field(0.95, ge=0, le=1, description="lambda of GAE.")
    vf_coef: float = Field(0.1, ge=0, description="Weight of the value loss in the total loss.")
    clip_range_value: float = Field(0.2, gt=0, description="The new value may move at most this far from the rollout's value (clipped value loss).")
    whiten_rewards: bool = Field(False, description="Whiten the per-token rewards (not their mean) before GAE.")
    adaptive_kl: bool = Field(False, description="Adapt kl_coef toward kl_target (Ziegler et al. 2019, Sec. 2.2) instead of keeping it fixed.")
    kl_target: float = Field(6.0, gt=0, description="Adaptive KL: the sequence KL (nats) to steer toward.")
    kl_horizon: int = Field(10000, ge=1, description="Adaptive KL: horizon in samples; larger adapts more slowly.")
    critic: str | None = Field(
        None,
        description="Folder the value model starts from. Default: the reward model of the first reward-model SPEC when its tokenizer equals the policy's, else the policy with a new scalar head.",
    )


class GRPOConfig(OnlineRLConfig):
    """``tether train grpo|rloo``: critic-free policy gradient with a group baseline. GRPO (Shao et al. 2024)
    normalizes each completion's reward within its prompt's group and puts the KL in the loss; RLOO (Ahmadian et
    al. 2024) subtracts the mean reward of the other completions and puts the KL in the reward."""

    algo: str = Field("grpo", pattern="^(grpo|rloo)$", description="grpo: group-normalized advantages; rloo: leave-one-out baseline.")
    group_size: int = Field(4, ge=2, description="Completions sampled per prompt (the group).")
    kl_coef: float = Field(0.04, ge=0, description="beta, the weight of KL(policy || reference); 0 skips the reference model.")
    kl_estimator: str = Field("k3", pattern="^(k1|k2|k3)$", description="Per-token KL estimator; GRPO uses k3 in the loss, RLOO usually k1 in the reward.")
    kl_in_reward: bool | None = Field(None, description="Subtract kl_coef x the completion's summed KL from its reward (True) or add kl_coef x KL to the loss (False). None: RLOO True, GRPO False.")
    scale_rewards: bool = Field(True, description="GRPO: divide by the group's reward std; False keeps only the mean centring (Dr. GRPO).")


C = TypeVar("C", bound=BaseModel)


def _parse_scalar(text: str) -> Any:
    """--set values are YAML scalars: 3, 0.1, true, [a, b], or a string."""
    import yaml

    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return text


def option_name(field: str) -> str:
    return "--" + field.replace("_", "-")


def load_config(
    cls: type[C], config_file: Path | None = None, sets: list[str] | None = None, *, implied: dict[str, tuple[Any, str]] | None = None, **flags: Any
) -> C:
    """Build ``cls`` from defaults < YAML file < --set pairs and flags (None flags are ignored).

    A field given both as a flag and with --set, or twice with --set, with different values is refused: which one
    should win is not obvious, so neither does. ``implied`` holds the values the command itself fixes, each with
    how to name it (``tether train rloo`` fixes ``algo``); a file or --set that says otherwise is refused too.
    """
    import yaml

    values: dict[str, Any] = {}
    origin: dict[str, str] = {}  # how to name each value in an error: where the user wrote it
    if config_file is not None:
        if not Path(config_file).is_file():
            raise TetherError(f"config file not found: {config_file}", fix="check the --config path")
        try:
            loaded = yaml.safe_load(Path(config_file).read_text(encoding="utf-8")) or {}
        except yaml.YAMLError as exc:
            raise TetherError(f"{config_file} is not valid YAML: {exc}", fix="correct the file") from None
        if not isinstance(loaded, dict):
            raise TetherError(f"{config_file} must hold a mapping of field: value", fix="write one `field: value` per line")
        values.update({str(k).replace("-", "_"): v for k, v in loaded.items()})
        origin.update({str(k).replace("-", "_"): f"{k} (in {config_file})" for k in loaded})
    set_here: dict[str, str] = {}  # field -> the --set pair that gave it
    for pair in sets or []:
        if "=" not in pair:
            raise TetherError(f"--set {pair!r} is not key=value", fix="write --set learning_rate=1e-5")
        key, raw = (part.strip() for part in pair.split("=", 1))
        field, value = key.replace("-", "_"), _parse_scalar(raw)
        if field in set_here and values[field] != value:
            raise TetherError(f"{set_here[field]} and --set {key}={raw} both set {field}", fix="give each field once")
        values[field], origin[field], set_here[field] = value, f"--set {key}={raw}", f"--set {key}={raw}"
    for field, value in flags.items():
        if value is None:
            continue
        if field in set_here and values[field] != value:
            raise TetherError(f"{option_name(field)} {value} and {set_here[field]} both set {field}", fix=f"give it once: the flag {option_name(field)} or --set {field}=...")
        values[field], origin[field] = value, option_name(field)
    for field, (value, by) in (implied or {}).items():
        if field in values and values[field] != value:
            raise TetherError(f"{by} sets {field}={value}, but {origin[field]} says {values[field]}", fix=f"drop {field} from the config file and --set: {by} sets it")
        values[field], origin[field] = value, by
    unknown = sorted(set(values) - set(cls.model_fields))
    if unknown:
        valid = ", ".join(sorted(cls.model_fields))
        raise TetherError(f"unknown config field(s): {', '.join(unknown)}", fix=f"valid fields: {valid}")
    try:
        return cls(**values)
    except ValidationError as exc:
        problems = []
        for error in exc.errors():
            where = ".".join(str(p) for p in error["loc"]) or "config"
            if error["type"] == "missing":
                problems.append(f"{option_name(where)} is missing (give the option, or `{where}:` in the --config file)")
                continue
            if where == "config":  # a check across fields: its message names them
                problems.append(error["msg"].removeprefix("Value error, "))
                continue
            name = origin.get(where, option_name(where) if where in cls.model_fields else where)
            problems.append(f"{name}: {error['msg']}")
        raise TetherError("invalid settings: " + "; ".join(problems), fix="correct the value(s) named above") from None
