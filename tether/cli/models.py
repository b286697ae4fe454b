"""`tether models ...`: bring models in from other formats (a GGUF file as a Hugging Face folder)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

models_app = typer.Typer(help="Models from other formats: import a GGUF file as a folder every `tether train` command takes.", no_args_is_help=True)


def register(app: typer.Typer) -> None:
    app.add_typer(models_app, name="models")


@models_app.command("import-gguf")
def import_gguf(
    file: Annotated[Path, typer.Argument(help="The .gguf file (llama.cpp's format, quantized or not).")],
    output: Annotated[Path, typer.Option("--output", "-o", help="The folder to write (new or empty).")],
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Write into a folder that is not empty.")] = False,
) -> None:
    """Dequantize a GGUF file into an ordinary Hugging Face folder (fp32 weights, config, tokenizer and its chat
    template): the folder then trains with `tether train ... --model DIR`. About 35 s on 2 CPU cores for a 135M model:
    import once, train from the folder.

    Example:  tether models import-gguf SmolLM2-135M-Instruct.Q4_1.gguf -o models/smollm2
    """
    from tether.models.gguf import import_gguf as run_import

    run_import(file, output, overwrite=overwrite, say=typer.echo)
