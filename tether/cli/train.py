"""`tether train ...`: seven trainers, one way to take options.

Every command takes its inputs, its own options, then the shared ones (declared once, in ``SHARED``); the command
builds the config (defaults < --config < flags and --set) and hands it to one recipe function. PPO, GRPO and RLOO
are one definition registered three times.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
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
        "Train models: sft, reward, dpo, kto, ppo, grpo, rloo (shared options: --output-dir --epochs --max-steps "
        "--batch-size --learning-rate --max-length --seed --lora-r --bf16 --resume --overwrite --config --set).\n\n"
        "Where values come from, lowest first: the defaults, the --config YAML file (any field, model, data and "
        "output_dir included), then the flags and --set; a flag and a --set for the same field with different "
        "values are refused. A new run into a folder that holds an earlier run is refused unless --overwrite; "
        "--resume refuses a checkpoint of another run (model, data or settings)."
    ),
    no_args_is_help=True,
)


def register(app: typer.Typer) -> None:
    app.add_typer(train_app, name="train")


LoraR = Annotated[int | None, typer.Option("--lora-r", help="LoRA rank (0: full fine-tuning).")]
Bf16 = Annotated[bool | None, typer.Option("--bf16/--no-bf16", help="bfloat16 mixed precision (GPUs that have it).")]

# The options of every `tether train` command, in the order --help lists them (after the command's own).
SHARED: dict[str, Any] = {
    "output_dir": OutputDir, "epochs": Epochs, "max_steps": MaxSteps, "batch_size": BatchSize,
    "learning_rate": LearningRate, "max_length": MaxLength, "seed": Seed, "lora_r": LoraR, "bf16": Bf16,
    "resume": Resume, "overwrite": Overwrite, "config": ConfigFile, "set_values": SetValues,
}


def _opt(flag: str, help: str, kind: Any = str) -> Any:
    return Annotated[kind | None, typer.Option(flag, help=help)]


PolicyModel = _opt("--model", "The starting policy: a causal LM folder (Llama, Qwen2, GPT-2, ...). Required (here or in --config).")
Merge = _opt("--merge/--no-merge", "With LoRA, save merged full weights instead of the adapter.", bool)
Beta = _opt("--beta", "KL strength of the implicit reward (DPO's beta, IPO's tau).", float)
ReferenceModel = _opt("--reference-model", "Frozen reference (default: the starting model; with LoRA, the adapter disabled).")


def _trainer(
    name: str, config_class: str, *, inputs: dict[str, Any], options: dict[str, Any] | None = None,
    algo: str | None = None, doc: str | None = None,
) -> Callable[[Callable[[Any], None]], Callable[[Any], None]]:
    """Register `tether train NAME`, whose options are ``inputs``, ``options`` and ``SHARED``: the command builds a
    ``tether.recipes.configs.<config_class>`` from them and calls the decorated function with it. ``algo``, when
    given, is the algorithm the command fixes (a --config or --set that names another is refused)."""

    def decorate(run: Callable[[Any], None]) -> Callable[[Any], None]:
        declared = {**inputs, **(options or {}), **SHARED}
        params = [inspect.Parameter(key, inspect.Parameter.KEYWORD_ONLY, default=None, annotation=kind) for key, kind in declared.items()]

        def command(**flags: Any) -> None:
            import tether.recipes.configs as configs

            config, set_values = flags.pop("config"), flags.pop("set_values")
            flags = {key: None if value == [] else value for key, value in flags.items()}  # an unused list option
            implied = {"algo": (algo, f"`tether train {algo}`")} if algo is not None else None
            run(configs.load_config(getattr(configs, config_class), config, set_values, implied=implied, **flags))

        command.__signature__ = inspect.Signature(params)  # type: ignore[attr-defined]
        command.__annotations__ = {p.name: p.annotation for p in params}
        command.__name__ = f"train_{name}_command"
        command.__doc__ = doc or run.__doc__
        train_app.command(name)(command)
        return run

    return decorate


def _done(result: Any, keys: tuple[str, ...]) -> None:
    """The last line of a run (under `accelerate launch` the other processes' stdout is silenced, so it is said once)."""
    shown = {k: round(v, 4) for k, v in result.metrics.items() if k in keys}
    typer.echo(f"done: {result.output_dir}  {shown}")


@_trainer(
    "reward", "RewardConfig",
    inputs={
        "model": _opt("--model", "Base model folder: an encoder (BERT-like) or a decoder (Llama, Qwen2, GPT-2). Required (here or in --config)."),
        "data": _opt("--data", "Preference rows (prompt/chosen/rejected) or ratings: a file or snapshot:NAME. Required (here or in --config)."),
    },
    options={
        "ensemble": _opt("--ensemble", "Train K reward heads (bootstrap ensemble); scoring reports mean and spread.", int),
        "objective": _opt("--objective", "pairwise (Bradley-Terry on pairs) or rating (regression, one head per aspect)."),
        "eval_data": _opt("--eval-data", "Held-out preference rows evaluated after training."),
        "gradient_checkpointing": _opt("--gradient-checkpointing/--no-gradient-checkpointing", "Recompute activations: less memory, slower.", bool),
    },
)
def _train_reward(cfg: Any) -> None:
    """Train a reward model on preference pairs (Bradley-Terry) or ratings; saves a Hugging Face folder + tether.json.

    Other fields (margins, row weights, ties, centering, normalization reference, ...) go through --config FILE.yaml or --set.
    Several GPUs: `accelerate launch --multi_gpu --num_processes 8 -m tether train reward ...` (the same global
    --batch-size); several CPU processes: the same with ACCELERATE_USE_CPU=1 (gloo).

    Example:  tether train reward --model ./minilm --data pairs.jsonl --output-dir rm --epochs 1 --batch-size 16
    """
    from tether.cli.common import data_workspace
    from tether.recipes.reward import train_reward

    _done(train_reward(cfg, workspace=data_workspace(cfg.data, cfg.eval_data, cfg.normalize_data)), ("train/loss", "reward/accuracy", "eval/accuracy", "eval/ece"))


@_trainer(
    "sft", "SFTConfig",
    inputs={"model": PolicyModel, "data": _opt("--data", "prompt/completion or messages rows: a file or snapshot:NAME. Required (here or in --config).")},
    options={"merge": Merge, "packing": _opt("--packing/--no-packing", "Pack examples into rows without padding (no cross-attention between them).", bool)},
)
def _train_sft(cfg: Any) -> None:
    """Supervised fine-tuning; the loss is on the completion (last assistant turn) only. Saves a HF folder + tether.json.

    Prompts go through the tokenizer's chat template, plain-text ones as a user turn (--set chat_template=false:
    as they are); a tokenizer without a template gets plain text; the run says which in one line. Preference rows
    train on their chosen answer, ties skipped and counted. A tokenizer without a pad token pads with EOS.
    Several processes/GPUs: `accelerate launch -m tether train sft ...`.

    Example:  tether train sft --model ./base --data demos.jsonl --output-dir sft --epochs 2 --batch-size 16
    """
    from tether.cli.common import data_workspace
    from tether.recipes.sft import train_sft

    _done(train_sft(cfg, workspace=data_workspace(cfg.data)), ("train/loss",))


@_trainer(
    "dpo", "DPOConfig",
    inputs={"model": PolicyModel, "data": _opt("--data", "Preference rows (prompt/chosen/rejected, or HH-RLHF dialogues): a file or snapshot:NAME. Required (here or in --config).")},
    options={
        "loss": _opt("--loss", "dpo, ipo or cdpo (DPO with label smoothing for noisy labels)."),
        "beta": Beta,
        "label_smoothing": _opt("--label-smoothing", "cDPO: assumed probability that a label is flipped (0 < eps < 0.5).", float),
        "reference_model": ReferenceModel,
        "merge": Merge,
    },
)
def _train_dpo(cfg: Any) -> None:
    """Preference optimization on pairs with DPO, IPO or cDPO; no reward model. Saves a HF folder + tether.json.

    Ties ("tie": true, `data snapshot --keep-ties`) are skipped and counted (ties_skipped in tether.json), never
    read as chosen > rejected. Reference log-probs are computed once and cached (--set precompute_ref=false computes
    them each step). Chat templates and pad tokens as in `train sft`. Several processes/GPUs: `accelerate launch -m
    tether train dpo ...`.

    Example:  tether train dpo --model ./sft --data snapshot:prefs --output-dir dpo --loss dpo --beta 0.1 --lora-r 16
    """
    from tether.cli.common import data_workspace
    from tether.recipes.dpo import train_dpo

    _done(train_dpo(cfg, workspace=data_workspace(cfg.data)), ("train/loss", "rewards/accuracies", "rewards/margins"))


@_trainer(
    "kto", "KTOConfig",
    inputs={
        "model": PolicyModel,
        "data": _opt("--data", "Unpaired rows {prompt, completion, label: true/false} (thumbs up/down), or preference pairs (each split into a desirable and an undesirable example, ties skipped): a file or snapshot:NAME. Required (here or in --config)."),
    },
    options={
        "beta": Beta,
        "desirable_weight": _opt("--desirable-weight", "lambda_D, the weight of thumbs-up examples.", float),
        "undesirable_weight": _opt("--undesirable-weight", "lambda_U, the weight of thumbs-down examples.", float),
        "reference_model": ReferenceModel,
        "merge": Merge,
    },
)
def _train_kto(cfg: Any) -> None:
    """KTO on unpaired thumbs-up / thumbs-down feedback; saves a HF folder + tether.json.

    Several processes/GPUs: `accelerate launch -m tether train kto ...`.

    Example:  tether train kto --model ./sft --data thumbs.jsonl --output-dir kto --beta 0.1 --undesirable-weight 1.3
    """
    from tether.cli.common import data_workspace
    from tether.recipes.kto import train_kto

    _done(train_kto(cfg, workspace=data_workspace(cfg.data)), ("train/loss", "rewards/chosen", "rewards/rejected"))


# --- ppo / grpo / rloo: one definition ------------------------------------------------------------------------
ONLINE_INPUTS = {
    "model": PolicyModel,
    "reward": Annotated[
        list[str] | None,
        typer.Option("--reward", help="A reward SPEC, repeatable (summed): a reward-model folder (a rating model with its aspects' weights, DIR:helpful=1,harm=-1), rules:FILE.yaml or py:FILE.py:FUNCTION; weight one with SPEC@W. Required (here or in --config)."),
    ],
    "prompts": _opt("--prompts", "Prompt rows {prompt: text or messages}: a file or snapshot:NAME. Required (here or in --config)."),
}
ONLINE_OPTIONS = {
    "group_size": _opt("--group-size", "Completions sampled per prompt (--batch-size counts completions).", int),
    "max_new_tokens": _opt("--max-new-tokens", "Most tokens generated per completion.", int),
    "kl_coef": _opt("--kl-coef", "beta, the weight of KL(policy || reference); 0 loads no reference.", float),
}
ONLINE_DOCS = {
    "ppo": """PPO with a critic: per-token KL-penalized rewards, GAE, clipped policy and value losses (Huang et al. 2024).

    The critic starts from the reward model when it shares the policy's tokenizer, else from the policy. More
    fields (ppo_epochs, num_minibatches, vf_coef, lam, adaptive_kl, kl_target, missing_eos_penalty, temperature,
    sampler=vllm, ...) go through --config FILE.yaml or --set. Writes metrics.jsonl, samples.jsonl, checkpoints.

    Example:  tether train ppo --model ./sft --reward ./rm --reward rules:policy.yaml@0.5 --prompts prompts.jsonl --output-dir ppo --batch-size 64 --max-new-tokens 128
    """,
    "grpo": """GRPO: group-normalized advantages over --group-size samples per prompt, KL to the reference in the loss.

    More fields (scale_rewards=false for Dr. GRPO, aggregation=sequence|token, kl_estimator, ppo_epochs,
    temperature, sampler=vllm, ...) go through --config FILE.yaml or --set.

    Example:  tether train grpo --model ./sft --reward py:checks.py:passes --prompts snapshot:prompts --output-dir grpo --group-size 8 --batch-size 64
    """,
    "rloo": """RLOO: each completion's baseline is the mean reward of its prompt's other samples; KL in the reward.

    The same loop and fields as `tether train grpo` (kl_in_reward, kl_estimator, ... through --config or --set).

    Example:  tether train rloo --model ./sft --reward ./rm --prompts prompts.jsonl --output-dir rloo --group-size 4 --batch-size 32
    """,
}


def _train_online(cfg: Any) -> None:
    from pathlib import Path

    from tether.cli.common import data_workspace, require_file

    if not cfg.prompts.startswith("snapshot:"):
        require_file(Path(cfg.prompts), "prompts file")
    from tether.recipes.configs import PPOConfig

    if isinstance(cfg, PPOConfig):
        from tether.recipes.ppo import train_ppo as trainer
    else:
        from tether.recipes.grpo import train_grpo as trainer
    keys = ("objective/scores", "objective/kl", "objective/rlhf_reward", "completions/mean_length")
    _done(trainer(cfg, workspace=data_workspace(cfg.prompts)), keys)


for _name, _class, _algo in (("ppo", "PPOConfig", None), ("grpo", "GRPOConfig", "grpo"), ("rloo", "GRPOConfig", "rloo")):
    _trainer(_name, _class, inputs=ONLINE_INPUTS, options=ONLINE_OPTIONS, algo=_algo, doc=ONLINE_DOCS[_name])(_train_online)


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
