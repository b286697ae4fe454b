"""`tether train ...`."""

from __future__ import annotations

import typer

train_app = typer.Typer(help="Train models: sft, reward, dpo, kto, ppo, grpo, rloo (shared options: --epochs --max-steps --batch-size --learning-rate --max-length --seed --output-dir --config --set).", no_args_is_help=True)


def register(app: typer.Typer) -> None:
    app.add_typer(train_app, name="train")
