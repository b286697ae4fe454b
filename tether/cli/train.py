"""`tether train ...`."""

from __future__ import annotations

from typing import Annotated

import typer

from tether.cli.common import (
    BatchSize,
    ConfigFile,
    Epochs,
    LearningRate,
    MaxLength,
    MaxSteps,
    OutputDir,
    Seed,
    SetValues,
)

train_app = typer.Typer(help="Train models: sft, reward, dpo, kto, ppo, grpo, rloo (shared options: --epochs --max-steps --batch-size --learning-rate --max-length --seed --output-dir --config --set).", no_args_is_help=True)


def register(app: typer.Typer) -> None:
    app.add_typer(train_app, name="train")


# --- sft / dpo / kto (offline policy training) --------------------------------------------------------------
LoraR = Annotated[int | None, typer.Option("--lora-r", help="LoRA rank (0: full fine-tuning).")]
Merge = Annotated[bool | None, typer.Option("--merge/--no-merge", help="With LoRA, save merged full weights instead of the adapter.")]
Bf16 = Annotated[bool | None, typer.Option("--bf16/--no-bf16", help="bfloat16 mixed precision (GPUs that have it).")]
Resume = Annotated[bool | None, typer.Option("--resume", help="Continue from the last checkpoint in --output-dir (see --set save_steps=N).")]
PolicyModel = Annotated[str, typer.Option("--model", help="The starting policy: a causal LM folder (Llama, Qwen2, GPT-2, ...).")]
Beta = Annotated[float | None, typer.Option("--beta", help="KL strength of the implicit reward (DPO's beta, IPO's tau).")]
ReferenceModel = Annotated[str | None, typer.Option("--reference-model", help="Frozen reference (default: the starting model; with LoRA, the adapter disabled).")]


def _done(output_dir: object, metrics: dict, keys: tuple[str, ...]) -> None:
    shown = {k: round(v, 4) for k, v in metrics.items() if k in keys}
    typer.echo(f"done: {output_dir}  {shown}")


@train_app.command("sft")
def train_sft_command(
    model: PolicyModel,
    data: Annotated[str, typer.Option("--data", help="prompt/completion or messages rows: a file or snapshot:NAME.")],
    output_dir: OutputDir,
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
    config: ConfigFile = None,
    set_values: SetValues = None,
) -> None:
    """Supervised fine-tuning; the loss is on the completion (last assistant turn) only. Saves a HF folder + tether.json.

    Conversations go through the tokenizer's chat template (or Tether's default template, tether.tiny, when the
    tokenizer has none). Several processes/GPUs: `accelerate launch -m tether train sft ...`.

    Example:  tether train sft --model ./base --data demos.jsonl --output-dir sft --epochs 2 --batch-size 16
    """
    from tether.config import SFTConfig, load_config

    cfg = load_config(
        SFTConfig, config, set_values,
        model=model, data=data, output_dir=output_dir, epochs=epochs, max_steps=max_steps, batch_size=batch_size,
        learning_rate=learning_rate, max_length=max_length, seed=seed, lora_r=lora_r, merge=merge, packing=packing,
        bf16=bf16, resume=resume,
    )
    from tether.train_sft import train_sft

    _done(output_dir, train_sft(cfg), ("train/loss",))


@train_app.command("dpo")
def train_dpo_command(
    model: PolicyModel,
    data: Annotated[str, typer.Option("--data", help="Preference rows (prompt/chosen/rejected, or HH-RLHF dialogues): a file or snapshot:NAME.")],
    output_dir: OutputDir,
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
    config: ConfigFile = None,
    set_values: SetValues = None,
) -> None:
    """Preference optimization on pairs with DPO, IPO or cDPO; no reward model. Saves a HF folder + tether.json.

    Reference log-probs are computed once and cached (--set precompute_ref=false computes them each step).
    Several processes/GPUs: `accelerate launch -m tether train dpo ...`.

    Example:  tether train dpo --model ./sft --data snapshot:prefs --output-dir dpo --loss dpo --beta 0.1 --lora-r 16
    """
    from tether.config import DPOConfig, load_config

    cfg = load_config(
        DPOConfig, config, set_values,
        model=model, data=data, output_dir=output_dir, loss=loss, beta=beta, label_smoothing=label_smoothing,
        reference_model=reference_model, epochs=epochs, max_steps=max_steps, batch_size=batch_size,
        learning_rate=learning_rate, max_length=max_length, seed=seed, lora_r=lora_r, merge=merge, bf16=bf16, resume=resume,
    )
    from tether.train_dpo import train_dpo

    _done(output_dir, train_dpo(cfg), ("train/loss", "rewards/accuracies", "rewards/margins"))


@train_app.command("kto")
def train_kto_command(
    model: PolicyModel,
    data: Annotated[str, typer.Option("--data", help="Unpaired rows {prompt, completion, label: true/false} (thumbs up/down): a file or snapshot:NAME.")],
    output_dir: OutputDir,
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
    config: ConfigFile = None,
    set_values: SetValues = None,
) -> None:
    """KTO on unpaired thumbs-up / thumbs-down feedback; saves a HF folder + tether.json.

    Several processes/GPUs: `accelerate launch -m tether train kto ...`.

    Example:  tether train kto --model ./sft --data thumbs.jsonl --output-dir kto --beta 0.1 --undesirable-weight 1.3
    """
    from tether.config import KTOConfig, load_config

    cfg = load_config(
        KTOConfig, config, set_values,
        model=model, data=data, output_dir=output_dir, beta=beta, desirable_weight=desirable_weight,
        undesirable_weight=undesirable_weight, reference_model=reference_model, epochs=epochs, max_steps=max_steps,
        batch_size=batch_size, learning_rate=learning_rate, max_length=max_length, seed=seed, lora_r=lora_r,
        merge=merge, bf16=bf16, resume=resume,
    )
    from tether.train_kto import train_kto

    _done(output_dir, train_kto(cfg), ("train/loss", "rewards/chosen", "rewards/rejected"))
