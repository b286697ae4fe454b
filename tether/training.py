"""Plumbing every trainer shares: seeds, devices, batching, optimizers, metrics, progress, checkpoints, saving.

Nothing here is an algorithm: each ``train_*.py`` keeps its own loop and its math lives in ``losses.py``.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import random
import shutil
import sys
from pathlib import Path
from typing import Any

import torch

from tether import __version__
from tether.config import TrainConfig
from tether.errors import TetherError
from tether.models.hf import TETHER_META

# ---------------------------------------------------------------------------------------------------------------
# Seeds and devices
# ---------------------------------------------------------------------------------------------------------------


def set_seed(seed: int) -> None:
    import numpy as np

    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)


def make_accelerator(cfg: TrainConfig) -> tuple[Any, int, int]:
    """The Accelerator, the gradient-accumulation steps and the per-process micro batch.

    ``cfg.batch_size`` is the global batch (all processes); the same number of examples reaches each optimizer
    step whatever the number of processes, so a run on 2 processes matches a run on 1.
    """
    from accelerate import Accelerator

    if cfg.bf16 and torch.cuda.is_available() and not torch.cuda.is_bf16_supported():
        raise TetherError("--bf16: this GPU has no bfloat16 support", fix="drop bf16 (train in fp32)")
    # Accelerate keeps the precision in a process-wide singleton; forget it (not the process group) so one process
    # can run several trainings (the demo: SFT, reward model, PPO) with their own settings.
    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state(reset_partial_state=False)
    # cpu=True without CUDA: `accelerate launch --num_processes 2` then starts gloo processes on a CPU machine.
    accelerator = Accelerator(mixed_precision="bf16" if cfg.bf16 else "no", cpu=not torch.cuda.is_available())
    if not accelerator.is_main_process:
        quiet_this_process()
    processes = accelerator.num_processes
    if cfg.batch_size % processes:
        raise TetherError(
            f"--batch-size {cfg.batch_size} is not divisible by the {processes} processes",
            fix=f"use a multiple of {processes}",
        )
    per_process = cfg.batch_size // processes
    micro = min(cfg.micro_batch_size or per_process, per_process)
    if per_process % micro:
        raise TetherError(
            f"--batch-size {cfg.batch_size} over {processes} process(es) is {per_process} per process, not a multiple of micro_batch_size {micro}",
            fix="choose batch_size = micro_batch_size x processes x k",
        )
    return accelerator, per_process // micro, micro


def quiet_this_process() -> None:
    """Silence a process that is not the main one, so that a run under ``accelerate launch`` says everything once.

    Its stdout (Tether's notes, ``done:``), Python warnings and the progress bars and warnings of transformers and
    huggingface_hub go; its stderr stays, so an error or traceback of this process alone is still seen.
    """
    import warnings

    sys.stdout = open(os.devnull, "w", encoding="utf-8")  # noqa: SIM115 (held for the life of the process)
    warnings.filterwarnings("ignore")
    try:
        import transformers

        transformers.utils.logging.set_verbosity_error()
        transformers.utils.logging.disable_progress_bar()
        from huggingface_hub.utils import disable_progress_bars

        disable_progress_bars()
    except ImportError:  # pragma: no cover (both come with the package)
        pass


def shard_batch(batch: list[int], accelerator: Any) -> list[int]:
    """This process's contiguous slice of a global batch of indices."""
    n, rank = accelerator.num_processes, accelerator.process_index
    size = math.ceil(len(batch) / n)
    return batch[rank * size : (rank + 1) * size]


# ---------------------------------------------------------------------------------------------------------------
# Batching and truncation
# ---------------------------------------------------------------------------------------------------------------


# ---------------------------------------------------------------------------------------------------------------
# Optimizer and schedule
# ---------------------------------------------------------------------------------------------------------------


def total_optimizer_steps(n_examples: int, cfg: TrainConfig) -> int:
    if cfg.max_steps:
        return cfg.max_steps
    return max(1, math.ceil(math.ceil(n_examples / cfg.batch_size) * cfg.epochs))


def make_optimizer(model: torch.nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    """AdamW; biases and norm weights get no weight decay."""
    decay, no_decay = [], []
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        (no_decay if param.ndim < 2 or "norm" in name.lower() else decay).append(param)
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    groups = [g for g in groups if g["params"]]
    if not groups:
        raise TetherError("the model has no trainable parameters", fix="check lora_target_modules or the model")
    fused = torch.cuda.is_available() and all(p.is_cuda for g in groups for p in g["params"])
    return torch.optim.AdamW(groups, lr=cfg.learning_rate, fused=fused or None)


def make_scheduler(optimizer: torch.optim.Optimizer, cfg: TrainConfig, total_steps: int) -> Any:
    warmup = int(cfg.warmup_ratio * total_steps)

    def factor(step: int) -> float:
        if warmup and step < warmup:
            return (step + 1) / warmup
        if cfg.lr_schedule == "constant":
            return 1.0
        progress = (step - warmup) / max(1, total_steps - warmup)
        if cfg.lr_schedule == "cosine":
            return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))
        return max(0.0, 1.0 - progress)

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


# ---------------------------------------------------------------------------------------------------------------
# Metrics and progress
# ---------------------------------------------------------------------------------------------------------------


class MetricsLogger:
    """Metrics as JSON lines in ``output_dir/metrics.jsonl``, and in the workspace's MLflow store when there is one."""

    def __init__(self, output_dir: Path, cfg: TrainConfig, run_name: str, accelerator: Any = None):
        self.is_main = accelerator is None or accelerator.is_main_process
        self.path = Path(output_dir) / "metrics.jsonl"
        self.history: list[dict[str, Any]] = []
        self._mlflow = None
        if not self.is_main:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if not cfg.resume and self.path.exists():
            self.path.unlink()
        if cfg.mlflow:
            self._mlflow = _start_mlflow_run(run_name, cfg)

    def log(self, step: int, metrics: dict[str, float]) -> None:
        record = {"step": step, **{k: float(v) for k, v in metrics.items()}}
        self.history.append(record)
        if not self.is_main:
            return
        with self.path.open("a", encoding="utf-8") as fh:
            fh.write(json.dumps(record) + "\n")
        if self._mlflow is not None:
            try:
                self._mlflow.log_metrics({k: float(v) for k, v in metrics.items()}, step=step)
            except Exception as exc:  # tracking must never stop training
                print(f"warning: MLflow logging failed ({exc}); metrics stay in {self.path}")
                self._mlflow = None

    def close(self) -> None:
        if self._mlflow is not None:
            self._mlflow.end_run()
            self._mlflow = None


def _start_mlflow_run(run_name: str, cfg: TrainConfig) -> Any:
    """Start a run in the workspace's MLflow store; None when there is no workspace or MLflow fails."""
    from tether.store.workspace import find_workspace

    root = find_workspace()
    if root is None or not (root / "tether.toml").exists():
        return None
    try:
        from tether.store.workspace import configure_mlflow

        mlflow = configure_mlflow(root)
        mlflow.start_run(run_name=run_name)
        mlflow.log_params({k: str(v)[:500] for k, v in cfg.model_dump().items()})
        return mlflow
    except Exception as exc:
        print(f"warning: MLflow unavailable ({exc}); metrics go to metrics.jsonl only")
        return None


class Progress:
    """A progress bar (rich) on stderr with a few live metrics."""

    def __init__(self, total: int, description: str, enabled: bool = True, completed: int = 0):
        self.enabled = enabled
        if not enabled:
            return
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )
        from rich.progress import Progress as RichProgress

        self._bar = RichProgress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            TextColumn("eta"),
            TimeRemainingColumn(),
            TextColumn("{task.fields[shown]}"),
            console=Console(stderr=True),
        )
        self._bar.start()
        self._task = self._bar.add_task(description, total=total, completed=completed, shown="")

    def advance(self, n: int = 1, **shown: float) -> None:
        if self.enabled:
            text = "  ".join(f"{k}={v:.4g}" for k, v in shown.items())
            self._bar.update(self._task, advance=n, shown=text)

    def close(self) -> None:
        if self.enabled:
            self._bar.stop()
            self.enabled = False

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


# ---------------------------------------------------------------------------------------------------------------
# Checkpoints and saving
# ---------------------------------------------------------------------------------------------------------------


# What a run writes in its output folder: its model and tokenizer (a Hugging Face folder), tether.json, metrics,
# samples, checkpoints and PPO's critic. Only these count as an earlier run, and --overwrite deletes only these: any
# other file in the folder (a config YAML, notes) is the user's and stays.
RUN_FILES = (
    "tether.json", "metrics.jsonl", "samples.jsonl", "checkpoints", "critic", "config.json", "generation_config.json",
    "*.safetensors", "*.safetensors.index.json", "pytorch_model*.bin", "pytorch_model*.bin.index.json", "adapter_*",
    "tokenizer*", "special_tokens_map.json", "added_tokens.json", "vocab.*", "merges.txt", "spiece.model",
    "sentencepiece*.model", "chat_template.*",
)


def run_files(output_dir: Path) -> list[Path]:
    """What an earlier run left in ``output_dir`` (see RUN_FILES): tether.json and checkpoints first, then by name."""
    root = Path(output_dir)
    if not root.is_dir():
        return []
    first = {"tether.json": 0, "checkpoints": 1}  # the telling ones first, for the message that lists them
    return sorted({path for pattern in RUN_FILES for path in root.glob(pattern)}, key=lambda p: (first.get(p.name, 2), p.name))


def model_fingerprint(model: str) -> str | None:
    """A short digest of what a local model folder holds: its config files and its weights (whole files up to
    64 MiB; larger ones by size and 64 blocks of 16 KiB spread over the file, which any retraining changes). None
    for a hub id (its name is its identity)."""
    root = Path(model)
    if not root.is_dir():
        return None
    digest = hashlib.sha256()
    for name in ("config.json", "adapter_config.json"):
        if (root / name).is_file():
            settings = json.loads((root / name).read_text(encoding="utf-8"))
            settings = {k: v for k, v in settings.items() if k not in ("transformers_version", "_name_or_path")}
            digest.update(name.encode() + json.dumps(settings, sort_keys=True).encode())
    block, blocks = 16 << 10, 64
    for path in sorted([*root.glob("*.safetensors"), *root.glob("*.bin")]):
        size = path.stat().st_size
        digest.update(f"{path.name}:{size}".encode())
        with path.open("rb") as fh:
            if size <= 64 << 20:
                digest.update(fh.read())
                continue
            for k in range(blocks):
                fh.seek((size - block) * k // (blocks - 1))
                digest.update(fh.read(block))
    return digest.hexdigest()[:16]


def _command(cfg: TrainConfig) -> str:
    """The `tether train` command of a config: sft, reward, dpo, kto, ppo, grpo or rloo."""
    return str(getattr(cfg, "algo", None) or type(cfg).__name__.removesuffix("Config").lower())


def run_identity(cfg: TrainConfig, data_digest: str, total_steps: int) -> dict[str, Any]:
    """What makes a checkpoint this run's: the command, the model (where it is and what it holds), the data's
    digest, the number of optimizer steps and every config field that changes what is computed."""
    from tether.config import RESUME_MAY_CHANGE

    model_path = Path(cfg.model)
    settings = json.loads(cfg.model_dump_json())
    return {
        "command": _command(cfg),
        "model": str(model_path.resolve()) if model_path.exists() else cfg.model,
        "model_fingerprint": model_fingerprint(cfg.model),
        "data_digest": data_digest,
        "total_steps": total_steps,
        "config": {k: v for k, v in settings.items() if k not in RESUME_MAY_CHANGE},
    }


def check_output_dir(cfg: TrainConfig) -> None:
    """Refuse, before any work, a run that would mix with an earlier one in ``cfg.output_dir``: a new run into a
    folder that holds an earlier run's model or checkpoints (unless ``overwrite``), or an output folder that is the
    model being trained. ``Checkpointer`` calls it; so can a caller that wants to fail before loading data."""
    from tether.config import option_name

    out = Path(cfg.output_dir)
    if out.exists() and not out.is_dir():
        raise TetherError(f"--output-dir {out} is a file", fix="name a folder (new or empty)")
    if Path(cfg.model).exists() and out.resolve() == Path(cfg.model).resolve():
        raise TetherError(f"--output-dir {out} is the --model folder: the run would write over the model it starts from", fix="choose another --output-dir")
    if cfg.resume or cfg.overwrite:
        return
    found = run_files(out)
    if found:
        names = ", ".join(p.name + ("/" if p.is_dir() else "") for p in found[:4]) + (", ..." if len(found) > 4 else "")
        raise TetherError(
            f"--output-dir {out} holds an earlier run ({names}); a new run there would mix with it",
            fix=f"continue it with --resume, replace it with {option_name('overwrite')} (deletes its model, metrics and checkpoints), or choose a new --output-dir",
        )


class Checkpointer:
    """Checkpoints in ``output_dir/checkpoints/step-N`` (model, optimizer, scheduler, RNG + trainer state), each
    with the identity of its run (``run_identity``), and the rules of the output folder, the same for every trainer.

    Made as soon as the run's data digest and step count are known, before any model loads: a fresh
    run refuses an earlier run's folder (``check_output_dir``), ``overwrite`` deletes the earlier run, ``resume``
    finds the last checkpoint and refuses it, in one line that names the difference, when it is another run's
    (another command, model, data, step count or setting). ``restore()`` then loads it after ``prepare``.
    """

    keep = 2

    def __init__(self, cfg: TrainConfig, accelerator: Any, *, data_digest: str, total_steps: int):
        self.root = Path(cfg.output_dir) / "checkpoints"
        self.accelerator = accelerator
        self.run = run_identity(cfg, data_digest, total_steps)
        self.resume_from: tuple[Path, dict[str, Any]] | None = None
        check_output_dir(cfg)
        out = Path(cfg.output_dir)
        if cfg.overwrite:
            found = run_files(out)
            accelerator.wait_for_everyone()  # every process has looked before the main one deletes
            if found and accelerator.is_main_process:
                for path in found:
                    shutil.rmtree(path) if path.is_dir() else path.unlink()
                print(f"note: --overwrite deleted the earlier run in {out} ({len(found)} entries)")
            accelerator.wait_for_everyone()
        elif cfg.resume:
            self.resume_from = self.latest()
            if self.resume_from is not None:
                self._check_belongs(*self.resume_from)
            elif (out / TETHER_META).exists():
                raise TetherError(
                    f"nothing to resume in {out}: it holds a finished run and no checkpoint (checkpoints need --set save_steps=N)",
                    fix="train again with --overwrite, or choose a new --output-dir",
                )
            else:
                accelerator.wait_for_everyone()
                if accelerator.is_main_process:
                    print(f"note: no checkpoint in {self.root} yet: starting at step 0")
                    _keep_steps_up_to(out, 0)  # a run stopped before its first checkpoint: its metrics start over
                accelerator.wait_for_everyone()

    def _check_belongs(self, path: Path, state: dict[str, Any]) -> None:
        """Refuse the checkpoint at ``path`` when it is another run's, naming the first difference."""
        from tether.config import option_name

        fix = "resume with that run's model, data and settings, or start a new run: --overwrite (deletes the old run) or another --output-dir"
        then, now = state.get("run"), self.run
        if not isinstance(then, dict):
            raise TetherError(f"the checkpoint {path} does not say which run it belongs to (written by an older Tether), so it cannot be resumed safely", fix=fix)
        if then["command"] != now["command"]:
            raise TetherError(f"the checkpoint {path} is from `tether train {then['command']}`, not `tether train {now['command']}`", fix=fix)
        if then["model"] != now["model"]:
            raise TetherError(f"the checkpoint {path} was trained from another model: {then['model']} (this run's --model: {now['model']})", fix=fix)
        if then["model_fingerprint"] != now["model_fingerprint"]:
            raise TetherError(f"the model {now['model']} changed since the checkpoint {path} was written (its config or weights differ)", fix=fix)
        if then["data_digest"] != now["data_digest"]:
            data = "--prompts" if now["command"] in ("ppo", "grpo", "rloo") else "--data"
            raise TetherError(
                f"the checkpoint {path} was trained on other data: {data} has digest {now['data_digest'][:12]}, the checkpoint's run {then['data_digest'][:12]}",
                fix=fix,
            )
        changed = [k for k in sorted(set(then["config"]) | set(now["config"])) if then["config"].get(k) != now["config"].get(k)]
        if changed:
            what = "; ".join(f"{option_name(k)} {now['config'].get(k)!r} (the checkpoint's run: {then['config'].get(k)!r})" for k in changed)
            raise TetherError(f"resume keeps the settings a run started with, and this one changes them: {what}", fix=fix)
        if then["total_steps"] != now["total_steps"]:
            raise TetherError(f"the checkpoint {path} belongs to a run of {then['total_steps']} steps; this one has {now['total_steps']}", fix=fix)

    def restore(self) -> dict[str, Any]:
        """Load the checkpoint found by ``resume`` (after ``accelerator.prepare``) and drop the metrics and samples
        logged after it; returns its trainer state (``step`` and what the trainer saved), ``{}`` on a fresh start."""
        if self.resume_from is None:
            return {}
        path, state = self.resume_from
        self.accelerator.load_state(str(path))
        self.accelerator.wait_for_everyone()
        if self.accelerator.is_main_process:
            _keep_steps_up_to(self.root.parent, int(state["step"]))
            print(f"resumed from {path} (step {state['step']} of {self.run['total_steps']})")
        self.accelerator.wait_for_everyone()
        return state

    def save(self, step: int, state: dict[str, Any] | None = None) -> Path:
        path = self.root / f"step-{step}"
        self.accelerator.wait_for_everyone()
        self.accelerator.save_state(str(path))
        if self.accelerator.is_main_process:
            (path / "trainer_state.json").write_text(json.dumps({"step": step, **(state or {}), "run": self.run}, indent=2))
            for old in self._all()[: -self.keep]:
                shutil.rmtree(old, ignore_errors=True)
        self.accelerator.wait_for_everyone()
        return path

    def _all(self) -> list[Path]:
        if not self.root.exists():
            return []
        done = [p for p in self.root.glob("step-*") if (p / "trainer_state.json").exists()]
        return sorted(done, key=lambda p: int(p.name.split("-")[1]))

    def latest(self) -> tuple[Path, dict[str, Any]] | None:
        found = self._all()
        if not found:
            return None
        return found[-1], json.loads((found[-1] / "trainer_state.json").read_text())


def _keep_steps_up_to(output_dir: Path, step: int) -> None:
    """Drop the records of metrics.jsonl and samples.jsonl logged after ``step`` (a resumed run logs them again)."""
    for name in ("metrics.jsonl", "samples.jsonl"):
        path = Path(output_dir) / name
        if not path.exists():
            continue
        kept = [line for line in path.read_text(encoding="utf-8").splitlines() if line.strip() and json.loads(line).get("step", 0) <= step]
        path.write_text("".join(line + "\n" for line in kept), encoding="utf-8")


def save_model_dir(
    model: Any,
    tokenizer: Any,
    output_dir: Path,
    *,
    kind: str,
    cfg: TrainConfig,
    data_digest: str,
    metrics: dict[str, Any],
    extra: dict[str, Any] | None = None,
    accelerator: Any = None,
) -> Path:
    """An ordinary Hugging Face directory plus ``tether.json`` (kind, base model, data digest, lineage, config,
    metrics, the prompt format of tether.models.hf; the lineage as tether.registry.model_lineage writes it)."""
    from tether.registry import model_lineage

    output_dir = Path(output_dir)
    if accelerator is not None:
        accelerator.wait_for_everyone()
        if not accelerator.is_main_process:
            return output_dir
        model = accelerator.unwrap_model(model)
    output_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(output_dir))
    if tokenizer is not None:
        tokenizer.save_pretrained(str(output_dir))
    meta = {
        "kind": kind,
        "tether_version": __version__,
        "base_model": cfg.model,
        "data_digest": data_digest,
        "lineage": model_lineage(json.loads(cfg.model_dump_json())),  # its snapshot and the models it came from
        "config": json.loads(cfg.model_dump_json()),
        "metrics": metrics,
        **(extra or {}),
    }
    if tokenizer is not None:  # how its prompts were rendered: later runs, sampling and scoring render them the same way
        from tether.models.hf import prompt_format

        meta["prompt_format"] = prompt_format(tokenizer)
    (output_dir / TETHER_META).write_text(json.dumps(meta, indent=2, sort_keys=True))
    return output_dir


