"""`tether train ...`."""

from __future__ import annotations

from typing import Annotated, Any

import typer

from tether.cli.common import (
    BatchSize,
    ConfigFile,
    Epochs,
    LearningRate,
    MaxLength,
    MaxSteps,
    OutputDir,
    Overwrite,
    Resume,
    Seed,
    SetValues,
)

train_app = typer.Typer(
    help=(
        "Train models: sft, reward, dpo, kto, ppo, grpo, rloo (shared options: --epochs --max-steps --batch-size "
        "--learning-rate --max-length --seed --output-dir --resume --overwrite --config --set).\n\n"
        "Where values come from, lowest first: the defaults, the --config YAML file (any field, model, data and "
        "output_dir included), then the flags and --set; a flag and a --set for the same field with different "
        "values are refused. A new run into a folder that holds an earlier run is refused unless --overwrite; "
        "--resume refuses a checkpoint of another run (model, data or settings)."
    ),
    no_args_is_help=True,
)


def register(app: typer.Typer) -> None:
    app.add_typer(train_app, name="train")


@train_app.command("reward")
def train_reward_command(
    model: Annotated[str | None, typer.Option("--model", help="Base model folder: an encoder (BERT-like) or a decoder (Llama, Qwen2, GPT-2). Required (here or in --config).")] = None,
    data: Annotated[str | None, typer.Option("--data", help="Preference rows (prompt/chosen/rejected) or ratings: a file or snapshot:NAME. Required (here or in --config).")] = None,
    output_dir: OutputDir = None,
    epochs: Epochs = None,
    max_steps: MaxSteps = None,
    batch_size: BatchSize = None,
    learning_rate: LearningRate = None,
    max_length: MaxLength = None,
    seed: Seed = None,
    lora_r: Annotated[int | None, typer.Option("--lora-r", help="LoRA rank (0: full fine-tuning).")] = None,
    ensemble: Annotated[int | None, typer.Option("--ensemble", help="Train K reward heads (bootstrap ensemble); scoring reports mean and spread.")] = None,
    objective: Annotated[str | None, typer.Option("--objective", help="pairwise (Bradley-Terry on pairs) or rating (regression, one head per aspect).")] = None,
    eval_data: Annotated[str | None, typer.Option("--eval-data", help="Held-out preference rows evaluated after training.")] = None,
    gradient_checkpointing: Annotated[bool | None, typer.Option("--gradient-checkpointing/--no-gradient-checkpointing", help="Recompute activations: less memory, slower.")] = None,
    bf16: Annotated[bool | None, typer.Option("--bf16/--no-bf16", help="bfloat16 mixed precision (GPUs that have it).")] = None,
    resume: Resume = None,
    overwrite: Overwrite = None,
    config: ConfigFile = None,
    set_values: SetValues = None,
) -> None:
    """Train a reward model on preference pairs (Bradley-Terry) or ratings; saves a Hugging Face folder + tether.json.

    Other fields (margins, ties, centering, normalization reference, ...) go through --config FILE.yaml or --set.
    Several GPUs: `accelerate launch --multi_gpu --num_processes 8 -m tether train reward ...` (the same global
    --batch-size); several CPU processes: the same with ACCELERATE_USE_CPU=1 (gloo).

    Example:  tether train reward --model ./minilm --data pairs.jsonl --output-dir rm --epochs 1 --batch-size 16
    """
    from tether.recipes.configs import RewardConfig, load_config

    cfg = load_config(
        RewardConfig, config, set_values,
        model=model, data=data, output_dir=output_dir, epochs=epochs, max_steps=max_steps, batch_size=batch_size,
        learning_rate=learning_rate, max_length=max_length, seed=seed, lora_r=lora_r, ensemble=ensemble,
        objective=objective, eval_data=eval_data, gradient_checkpointing=gradient_checkpointing, bf16=bf16, resume=resume,
        overwrite=overwrite,
    )
    from tether.cli.common import data_workspace
    from tether.recipes.reward import train_reward

    _done(train_reward(cfg, workspace=data_workspace(cfg.data, cfg.eval_data, cfg.normalize_data)), ("train/loss", "reward/accuracy", "eval/accuracy", "eval/ece"))


# --- sft / dpo / kto (offline policy training) --------------------------------------------------------------
LoraR = Annotated[int | None, typer.Option("--lora-r", help="LoRA rank (0: full fine-tuning).")]
Merge = Annotated[bool | None, typer.Option("--merge/--no-merge", help="With LoRA, save merged full weights instead of the adapter.")]
Bf16 = Annotated[bool | None, typer.Option("--bf16/--no-bf16", help="bfloat16 mixed precision (GPUs that have it).")]
PolicyModel = Annotated[str | None, typer.Option("--model", help="The starting policy: a causal LM folder (Llama, Qwen2, GPT-2, ...). Required (here or in --config).")]
Beta = Annotated[float | None, typer.Option("--beta", help="KL strength of the implicit reward (DPO's beta, IPO's tau).")]
ReferenceModel = Annotated[str | None, typer.Option("--reference-model", help="Frozen reference (default: the starting model; with LoRA, the adapter disabled).")]


def _done(result: Any, keys: tuple[str, ...]) -> None:
    """The last line of a run (under `accelerate launch` the other processes' stdout is silenced, so it is said once)."""
    shown = {k: round(v, 4) for k, v in result.metrics.items() if k in keys}
    typer.echo(f"done: {result.output_dir}  {shown}")


@train_app.command("sft")
def train_sft_command(
    model: PolicyModel = None,
    data: Annotated[str | None, typer.Option("--data", help="prompt/completion or messages rows: a file or snapshot:NAME. Required (here or in --config).")] = None,
    output_dir: OutputDir = None,
    epochs: Epochs = None,
    max_steps: MaxSteps = None,
    batch_size: BatchSize = None,
    learning_rate: LearningRate = None,
    max_length: MaxLength = None,
    seed: Seed = None,
    lora_r: LoraR = None,
    merge: Merge = None,
    packing: Annotated[bool | None, typer.Option("--packing/--no-packing", help="Pack examples into rows without padding (no cross-attention between them).")] = None,
    bf16: Bf16 = None,
    resume: Resume = None,
    overwrite: Overwrite = None,
    config: ConfigFile = None,
    set_values: SetValues = None,
) -> None:
    """Supervised fine-tuning; the loss is on the completion (last assistant turn) only. Saves a HF folder + tether.json.

    Prompts go through the tokenizer's chat template, plain-text ones as a user turn (--set chat_template=false:
    as they are); a tokenizer without a template gets plain text; the run says which in one line. Preference rows
    train on their chosen answer, ties skipped and counted. A tokenizer without a pad token pads with EOS.
    Several processes/GPUs: `accelerate launch -m tether train sft ...`.

    Example:  tether train sft --model ./base --data demos.jsonl --output-dir sft --epochs 2 --batch-size 16
    """
    from tether.recipes.configs import SFTConfig, load_config

    cfg = load_config(
        SFTConfig, config, set_values,
        model=model, data=data, output_dir=output_dir, epochs=epochs, max_steps=max_steps, batch_size=batch_size,
        learning_rate=learning_rate, max_length=max_length, seed=seed, lora_r=lora_r, merge=merge, packing=packing,
        bf16=bf16, resume=resume, overwrite=overwrite,
    )
    from tether.cli.common import data_workspace
    from tether.recipes.sft import train_sft

    _done(train_sft(cfg, workspace=data_workspace(cfg.data)), ("train/loss",))


@train_app.command("dpo")
def train_dpo_command(
    model: PolicyModel = None,
    data: Annotated[str | None, typer.Option("--data", help="Preference rows (prompt/chosen/rejected, or HH-RLHF dialogues): a file or snapshot:NAME. Required (here or in --config).")] = None,
    output_dir: OutputDir = None,
    loss: Annotated[str | None, typer.Option("--loss", help="dpo, ipo or cdpo (DPO with label smoothing for noisy labels).")] = None,
    beta: Beta = None,
    label_smoothing: Annotated[float | None, typer.Option("--label-smoothing", help="cDPO: assumed probability that a label is flipped (0 < eps < 0.5).")] = None,
    reference_model: ReferenceModel = None,
    epochs: Epochs = None,
    max_steps: MaxSteps = None,
    batch_size: BatchSize = None,
    learning_rate: LearningRate = None,
    max_length: MaxLength = None,
    seed: Seed = None,
    lora_r: LoraR = None,
    merge: Merge = None,
    bf16: Bf16 = None,
    resume: Resume = None,
    overwrite: Overwrite = None,
    config: ConfigFile = None,
    set_values: SetValues = None,
) -> None:
    """Preference optimization on pairs with DPO, IPO or cDPO; no reward model. Saves a HF folder + tether.json.

    Ties ("tie": true, `data snapshot --keep-ties`) are skipped and counted (ties_skipped in tether.json), never
    read as chosen > rejected. Reference log-probs are computed once and cached (--set precompute_ref=false computes
    them each step). Chat templates and pad tokens as in `train sft`. Several processes/GPUs: `accelerate launch -m
    tether train dpo ...`.

    Example:  tether train dpo --model ./sft --data snapshot:prefs --output-dir dpo --loss dpo --beta 0.1 --lora-r 16
    """
    from tether.recipes.configs import DPOConfig, load_config

    cfg = load_config(
        DPOConfig, config, set_values,
        model=model, data=data, output_dir=output_dir, loss=loss, beta=beta, label_smoothing=label_smoothing,
        reference_model=reference_model, epochs=epochs, max_steps=max_steps, batch_size=batch_size,
        learning_rate=learning_rate, max_length=max_length, seed=seed, lora_r=lora_r, merge=merge, bf16=bf16, resume=resume,
        overwrite=overwrite,
    )
    from tether.cli.common import data_workspace
    from tether.recipes.dpo import train_dpo

    _done(train_dpo(cfg, workspace=data_workspace(cfg.data)), ("train/loss", "rewards/accuracies", "rewards/margins"))


@train_app.command("kto")
def train_kto_command(
    model: PolicyModel = None,
    data: Annotated[str | None, typer.Option("--data", help="Unpaired rows {prompt, completion, label: true/false} (thumbs up/down), or preference pairs (each split into a desirable and an undesirable example, ties skipped): a file or snapshot:NAME. Required (here or in --config).")] = None,
    output_dir: OutputDir = None,
    beta: Beta = None,
    desirable_weight: Annotated[float | None, typer.Option("--desirable-weight", help="lambda_D, the weight of thumbs-up examples.")] = None,
    undesirable_weight: Annotated[float | None, typer.Option("--undesirable-weight", help="lambda_U, the weight of thumbs-down examples.")] = None,
    reference_model: ReferenceModel = None,
    epochs: Epochs = None,
    max_steps: MaxSteps = None,
    batch_size: BatchSize = None,
    learning_rate: LearningRate = None,
    max_length: MaxLength = None,
    seed: Seed = None,
    lora_r: LoraR = None,
    merge: Merge = None,
    bf16: Bf16 = None,
    resume: Resume = None,
    overwrite: Overwrite = None,
    config: ConfigFile = None,
    set_values: SetValues = None,
) -> None:
    """KTO on unpaired thumbs-up / thumbs-down feedback; saves a HF folder + tether.json.

    Several processes/GPUs: `accelerate launch -m tether train kto ...`.

    Example:  tether train kto --model ./sft --data thumbs.jsonl --output-dir kto --beta 0.1 --undesirable-weight 1.3
    """
    from tether.recipes.configs import KTOConfig, load_config

    cfg = load_config(
        KTOConfig, config, set_values,
        model=model, data=data, output_dir=output_dir, beta=beta, desirable_weight=desirable_weight,
        undesirable_weight=undesirable_weight, reference_model=reference_model, epochs=epochs, max_steps=max_steps,
        batch_size=batch_size, learning_rate=learning_rate, max_length=max_length, seed=seed, lora_r=lora_r,
        merge=merge, bf16=bf16, resume=resume, overwrite=overwrite,
    )
    from tether.cli.common import data_workspace
    from tether.recipes.kto import train_kto

    _done(train_kto(cfg, workspace=data_workspace(cfg.data)), ("train/loss", "rewards/chosen", "rewards/rejected"))


# --- ppo / grpo / rloo (online RL) ---------------------------------------------------------------------------
RewardSpecs = Annotated[
    list[str] | None,
    typer.Option("--reward", help="A reward SPEC, repeatable (summed): a reward-model folder (a rating model with its aspects' weights, DIR:helpful=1,harm=-1), rules:FILE.yaml or py:FILE.py:FUNCTION; weight one with SPEC@W. Required (here or in --config)."),
]
Prompts = Annotated[str | None, typer.Option("--prompts", help="Prompt rows {prompt: text or messages}: a file or snapshot:NAME. Required (here or in --config).")]
GroupSize = Annotated[int | None, typer.Option("--group-size", help="Completions sampled per prompt (--batch-size counts completions).")]
MaxNewTokens = Annotated[int | None, typer.Option("--max-new-tokens", help="Most tokens generated per completion.")]
KlCoef = Annotated[float | None, typer.Option("--kl-coef", help="beta, the weight of KL(policy || reference); 0 loads no reference.")]


def _online_rl(cls_name: str, algo: str | None, **flags: object) -> None:
    """Build the config, train, report: shared by ppo, grpo and rloo."""
    from pathlib import Path

    import tether.recipes.configs as config_module
    from tether.cli.common import require_file

    config, set_values = flags.pop("config"), flags.pop("set_values")
    flags["reward"] = flags["reward"] or None  # no --reward: the config file may give it
    implied = {"algo": (algo, f"`tether train {algo}`")} if algo is not None else None
    cfg = config_module.load_config(getattr(config_module, cls_name), config, set_values, implied=implied, **flags)
    if not cfg.prompts.startswith("snapshot:"):
        require_file(Path(cfg.prompts), "prompts file")
    if cls_name == "PPOConfig":
        from tether.recipes.ppo import train_ppo as trainer
    else:
        from tether.recipes.grpo import train_grpo as trainer
    from tether.cli.common import data_workspace

    keys = ("objective/scores", "objective/kl", "objective/rlhf_reward", "completions/mean_length")
    _done(trainer(cfg, workspace=data_workspace(cfg.prompts)), keys)


@train_app.command("ppo")
def train_ppo_command(
    model: PolicyModel = None,
    reward: RewardSpecs = None,
    prompts: Prompts = None,
    output_dir: OutputDir = None,
    group_size: GroupSize = None,
    max_new_tokens: MaxNewTokens = None,
    kl_coef: KlCoef = None,
    epochs: Epochs = None,
    max_steps: MaxSteps = None,
    batch_size: BatchSize = None,
    learning_rate: LearningRate = None,
    max_length: MaxLength = None,
    seed: Seed = None,
    lora_r: LoraR = None,
    bf16: Bf16 = None,
    resume: Resume = None,
    overwrite: Overwrite = None,
    config: ConfigFile = None,
    set_values: SetValues = None,
) -> None:
    """PPO with a critic: per-token KL-penalized rewards, GAE, clipped policy and value losses (Huang et al. 2024).

    The critic starts from the reward model when it shares the policy's tokenizer, else from the policy. More
    fields (ppo_epochs, num_minibatches, vf_coef, lam, adaptive_kl, kl_target, missing_eos_penalty, temperature,
    sampler=vllm, ...) go through --config FILE.yaml or --set. Writes metrics.jsonl, samples.jsonl, checkpoints.

    Example:  tether train ppo --model ./sft --reward ./rm --reward rules:policy.yaml@0.5 --prompts prompts.jsonl --output-dir ppo --batch-size 64 --max-new-tokens 128
    """
    _online_rl("PPOConfig", None, **locals())  # first statement: locals() holds exactly the options


@train_app.command("grpo")
def train_grpo_command(
    model: PolicyModel = None,
    reward: RewardSpecs = None,
    prompts: Prompts = None,
    output_dir: OutputDir = None,
    group_size: GroupSize = None,
    max_new_tokens: MaxNewTokens = None,
    kl_coef: KlCoef = None,
    epochs: Epochs = None,
    max_steps: MaxSteps = None,
    batch_size: BatchSize = None,
    learning_rate: LearningRate = None,
    max_length: MaxLength = None,
    seed: Seed = None,
    lora_r: LoraR = None,
    bf16: Bf16 = None,
    resume: Resume = None,
    overwrite: Overwrite = None,
    config: ConfigFile = None,
    set_values: SetValues = None,
) -> None:
    """GRPO: group-normalized advantages over --group-size samples per prompt, KL to the reference in the loss.

    More fields (scale_rewards=false for Dr. GRPO, aggregation=sequence|token, kl_estimator, ppo_epochs,
    temperature, sampler=vllm, ...) go through --config FILE.yaml or --set.

    Example:  tether train grpo --model ./sft --reward py:checks.py:passes --prompts snapshot:prompts --output-dir grpo --group-size 8 --batch-size 64
    """
    _online_rl("GRPOConfig", "grpo", **locals())  # first statement: locals() holds exactly the options


@train_app.command("rloo")
def train_rloo_command(
    model: PolicyModel = None,
    reward: RewardSpecs = None,
    prompts: Prompts = None,
    output_dir: OutputDir = None,
    group_size: GroupSize = None,
    max_new_tokens: MaxNewTokens = None,
    kl_coef: KlCoef = None,
    epochs: Epochs = None,
    max_steps: MaxSteps = None,
    batch_size: BatchSize = None,
    learning_rate: LearningRate = None,
    max_length: MaxLength = None,
    seed: Seed = None,
    lora_r: LoraR = None,
    bf16: Bf16 = None,
    resume: Resume = None,
    overwrite: Overwrite = None,
    config: ConfigFile = None,
    set_values: SetValues = None,
) -> None:
    """RLOO: each completion's baseline is the mean reward of its prompt's other samples; KL in the reward.

    The same loop and fields as `tether train grpo` (kl_in_reward, kl_estimator, ... through --config or --set).

    Example:  tether train rloo --model ./sft --reward ./rm --prompts prompts.jsonl --output-dir rloo --group-size 4 --batch-size 32
    """
    _online_rl("GRPOConfig", "rloo", **locals())  # first statement: locals() holds exactly the options


@train_app.command("fields")
def train_fields_command(
    kind: Annotated[str, typer.Argument(help="reward, sft, dpo, kto, ppo, grpo or rloo.")],
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object on stdout instead of a table.")] = False,
) -> None:
    """Every config field of one `tether train` command: its default and what it does.

    Any field can be set in a --config YAML file (`field: value`, one per line; model, data and output_dir too) or
    with --set field=value; both override the defaults, and the flags (--batch-size, ...) and --set override the
    file. A flag and a --set that give the same field different values are refused.

    Example: tether train fields grpo
    """
    from tether.cli.common import console, emit_json
    from tether.errors import TetherError
    from tether.recipes.configs import DPOConfig, GRPOConfig, KTOConfig, PPOConfig, RewardConfig, SFTConfig

    classes = {"reward": RewardConfig, "sft": SFTConfig, "dpo": DPOConfig, "kto": KTOConfig, "ppo": PPOConfig, "grpo": GRPOConfig, "rloo": GRPOConfig}
    if kind not in classes:
        raise TetherError(f"no training command {kind!r}", fix=f"use one of: {', '.join(classes)}")
    fields = {
        name: {"default": None if info.is_required() else info.get_default(call_default_factory=True), "required": info.is_required(), "description": info.description or ""}
        for name, info in classes[kind].model_fields.items()
    }
    if kind == "rloo":  # the same fields as grpo; `tether train rloo` sets the algorithm
        fields["algo"]["default"] = "rloo"
    if as_json:
        emit_json(fields)
        return
    from rich.table import Table

    table = Table(title=f"tether train {kind}: config fields (--set field=value, or field: value in --config)", show_lines=False)
    for column in ("field", "default", "what it does"):
        table.add_column(column, overflow="fold")
    for name, info in fields.items():
        table.add_row(name, "(required)" if info["required"] else repr(info["default"]), info["description"])
    console().print(table)
