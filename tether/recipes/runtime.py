"""The plumbing every trainer shares, set up by ``Run`` in one order for all of them: accelerator, seed, the output
folder's rules (before any model loads), optimizer and schedule, accelerate, resume, metrics, progress; one result
type (``TrainResult``: the output folder and the final metrics) and one progress hook (``on_step(step, stats)``,
after every optimizer step).

Nothing here is an algorithm: each recipe keeps its own loop and its math lives in tether.math.losses. The order
every trainer follows::

    run = Run(cfg, "dpo", workspace=workspace, on_step=on_step)  # accelerator, seed
    rows = run.rows(cfg.data, "preference")                        # a file, or snapshot:NAME in the workspace
    ...                                                            # tokenize, plan the steps
    run.plan(data_digest, total_steps)                             # refuses a folder that holds another run
    ...                                                            # load the models
    (policy,) = run.prepare(policy)                                # optimizer + schedule per model, accelerate
    state = run.start()                                            # resume, metrics.jsonl (+ MLflow), progress
    for step in range(state["step"], run.total_steps):
        ...                                                        # the recipe's loop
        grad_norm = run.optimizer_step()
        run.end_step(step + 1, metrics, loss=...)                  # log, checkpoint, progress, the hook
    return run.save(model, tokenizer, kind="dpo", metrics=metrics, extra=...)
"""

from __future__ import annotations

import contextlib
import functools
import json
import math
import os
import random
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from tether import __version__
from tether.errors import TetherError
from tether.models.hf import TETHER_META
from tether.recipes.checkpoints import Checkpointer
from tether.recipes.configs import TrainConfig
from tether.recipes.fsdp import gather_full_weights, is_fsdp, use_fsdp_on_cpu

StepHook = Callable[[int, dict[str, float]], Any]


@dataclass
class TrainResult:
    """What every trainer returns: where the model was saved and its final metrics."""

    output_dir: Path
    metrics: dict[str, float]


class Run:
    """One training run's plumbing (see the module doc for the order)."""

    def __init__(self, cfg: TrainConfig, name: str, *, workspace: Any = None, on_step: StepHook | None = None, label: str | None = None):
        self.cfg, self.name, self.workspace, self.on_step = cfg, name, workspace, on_step
        self.label = label or name  # the progress bar's description
        self.accelerator, self.grad_accum, self.micro_batch = make_accelerator(cfg)
        set_seed(cfg.seed)
        self.say = self.accelerator.print
        self.checkpointer: Checkpointer | None = None
        self.data_digest, self.total_steps = "", 0
        self.models: list[Any] = []
        self.optimizers: list[Any] = []
        self.schedulers: list[Any] = []

    @property
    def output_dir(self) -> Path:
        return Path(self.cfg.output_dir)

    @property
    def world(self) -> int:
        return self.accelerator.num_processes

    def rows(self, spec: Any, kind: str) -> list[dict[str, Any]]:
        """Training rows of ``kind`` from a file or ``snapshot:NAME`` (found in the run's workspace). A plain file is
        read without the store (whose tables and SQLAlchemy cost half a second to import)."""
        if not str(spec).startswith("snapshot:"):
            from tether.data.rows import load_rows

            return load_rows(spec, kind)
        from tether.store.snapshots import training_rows

        return training_rows(spec, kind, workspace=self.workspace)

    def plan(self, data_digest: str, total_steps: int) -> None:
        """The run's identity (its data and length): the output folder is checked now, before any model loads."""
        self.data_digest, self.total_steps = data_digest, total_steps
        self.checkpointer = Checkpointer(self.cfg, self.accelerator, data_digest=data_digest, total_steps=total_steps)

    def keep_in_checkpoints(self, name: str, obj: Any) -> None:
        """Save ``obj`` (``state_dict`` / ``load_state_dict``) in every checkpoint and restore it on resume; call
        after ``plan`` and before ``start``."""
        assert self.checkpointer is not None, "plan() first"
        self.checkpointer.process_states[name] = obj

    def prepare(self, *models: torch.nn.Module) -> tuple[Any, ...]:
        """An AdamW and a learning-rate schedule for each trainable model, all handed to Accelerate; the schedulers are
        registered for checkpointing, not prepared (Accelerate's wrapper would step once per process)."""
        if self.cfg.torch_compile:
            for model in models:
                compile_blocks(model)
        self.optimizers = [make_optimizer(model, self.cfg) for model in models]
        self.schedulers = [make_scheduler(optimizer, self.cfg, self.total_steps) for optimizer in self.optimizers]
        prepared = self.accelerator.prepare(*models, *self.optimizers)
        self.models, self.optimizers = list(prepared[: len(models)]), list(prepared[len(models) :])
        for scheduler in self.schedulers:
            self.accelerator.register_for_checkpointing(scheduler)
        return tuple(self.models)

    def start(self) -> dict[str, Any]:
        """Resume (the checkpoint ``--resume`` found), open the metrics log and the progress bar; returns the trainer
        state saved with the checkpoint (``step`` 0 on a fresh run)."""
        state = {"step": 0, **self.checkpointer.restore()}
        self.logger = MetricsLogger(self.output_dir, self.cfg, f"{self.name}-{self.output_dir.name}", self.accelerator, self.workspace)
        enabled = self.cfg.progress and self.accelerator.is_main_process
        self.progress = Progress(self.total_steps, self.label, enabled=enabled, completed=int(state["step"]))
        return state

    @contextlib.contextmanager
    def accumulating(self, last: bool) -> Iterator[None]:
        """Around one micro batch's backward: gradients are synced over the processes on the ``last`` one only."""
        with contextlib.ExitStack() as stack:
            if not last:
                for model in self.models:
                    stack.enter_context(self.accelerator.no_sync(model))
            yield

    def optimizer_step(self) -> float:
        """Clip each model's gradients to ``max_grad_norm``, step its optimizer and schedule, zero its gradients;
        returns the first model's gradient norm before clipping."""
        norms = [self.accelerator.clip_grad_norm_(model.parameters(), self.cfg.max_grad_norm) for model in self.models]
        for optimizer, scheduler in zip(self.optimizers, self.schedulers):
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
        return float(norms[0])

    @property
    def learning_rate(self) -> float:
        return self.schedulers[0].get_last_lr()[0]

    def step_done(self, step: int, stats: dict[str, float], **shown: float) -> None:
        """After each optimizer step: the progress bar (with ``shown``) and the hook."""
        self.progress.advance(1, **shown)
        if self.on_step is not None:
            self.on_step(step, stats)

    def log(self, step: int, metrics: dict[str, float], *, steps: int = 1, last: bool = False) -> None:
        """Log ``metrics`` when the last ``steps`` optimizer steps reached a multiple of ``logging_steps``, or ``last``."""
        if last or crossed(step, self.cfg.logging_steps, steps):
            self.logger.log(step, metrics)

    def checkpoint(self, step: int, state: dict[str, Any] | None = None, *, steps: int = 1, last: bool = False) -> None:
        """Checkpoint when the last ``steps`` optimizer steps reached a multiple of ``save_steps`` (never at the end:
        the saved model is the end)."""
        if self.cfg.save_steps and not last and crossed(step, self.cfg.save_steps, steps):
            self.checkpointer.save(step, state)

    def end_step(self, step: int, metrics: dict[str, float], **shown: float) -> None:
        """After an optimizer step of a trainer that logs every step: log, checkpoint, progress, hook."""
        last = step == self.total_steps
        self.log(step, metrics, last=last)
        self.checkpoint(step, last=last)
        self.step_done(step, metrics, **shown)

    def reduce(self, values: dict[str, float], op: str = "sum") -> dict[str, float]:
        """Each value summed (``op="sum"``) or averaged (``"mean"``) over the processes, in one collective."""
        return reduce_over_processes(self.accelerator, values, op)

    def close(self) -> None:
        self.progress.close()
        self.logger.close()

    def save(self, model: Any, tokenizer: Any, *, kind: str, metrics: dict[str, float], extra: dict[str, Any] | None = None, merge: bool | None = None) -> TrainResult:
        """Close the run and save ``model`` (unwrapped) as a Hugging Face folder + tether.json in the output folder;
        with LoRA, the adapter or (``merge``, default ``cfg.merge``) the merged weights."""
        self.close()
        if is_fsdp(self.accelerator):  # each process holds shards: the whole weights, on every process, to save them
            gather_full_weights(model)
        merge = getattr(self.cfg, "merge", False) if merge is None else merge
        if self.cfg.lora_r and merge:
            model = model.merge_and_unload()
        save_model_dir(model, tokenizer, self.output_dir, kind=kind, cfg=self.cfg, data_digest=self.data_digest, metrics=metrics,
                       extra=extra, accelerator=self.accelerator, workspace=self.workspace)
        return TrainResult(self.output_dir, metrics)


def compile_blocks(model: torch.nn.Module) -> int:
    """``torch.compile`` (inductor, dynamic shapes) each repeated block of ``model`` in place: the classes its Hugging
    Face models name in ``_no_split_modules`` (decoder layers), else the whole model. In place (``Module.compile``), so
    parameter names, checkpoints and saving are unchanged, and one compiled block serves every layer. Returns how
    many modules were compiled."""
    names = {name for module in model.modules() for name in (getattr(module, "_no_split_modules", None) or [])}
    blocks = [module for module in model.modules() if type(module).__name__ in names]
    for module in blocks or [model]:
        module.compile(dynamic=True)
    return len(blocks) or 1


def crossed(step: int, every: int, steps: int = 1) -> bool:
    """True when the ``steps`` optimizer steps that ended at ``step`` passed a multiple of ``every``."""
    return step // every > (step - steps) // every


def reduce_over_processes(accelerator: Any, values: dict[str, float], op: str = "sum") -> dict[str, float]:
    """Each value summed or averaged over the processes, in one float64 collective (identity on one process)."""
    if op not in ("sum", "mean"):
        raise ValueError(f"unknown reduction {op!r}; valid: sum, mean")
    if accelerator.num_processes == 1 or not values:
        return dict(values)
    keys = sorted(values)
    tensor = torch.tensor([float(values[k]) for k in keys], dtype=torch.float64, device=accelerator.device)
    return dict(zip(keys, accelerator.reduce(tensor, op).tolist()))


def check_kept(n_rows: int, n_kept: int, cfg: TrainConfig, what: str) -> None:
    """Refuse a run whose every example is too long; say how many were skipped."""
    if n_kept == 0:
        raise TetherError(f"no {what} fits in --max-length {cfg.max_length} (every completion is longer)", fix="raise --max-length")
    if n_kept < n_rows:
        print(f"note: skipped {n_rows - n_kept} of {n_rows} {what}s whose completion alone exceeds --max-length {cfg.max_length}")


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
    use_fsdp_on_cpu(accelerator)  # `accelerate launch --use_fsdp` on CPU processes: FSDP2 as on GPUs (tether.recipes.fsdp)
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
    return torch.optim.AdamW(groups, lr=cfg.learning_rate, fused=_can_fuse([p for g in groups for p in g["params"]]) or None)


def _can_fuse(params: list[torch.Tensor]) -> bool:
    """True when torch's fused AdamW kernel takes these parameters: floating tensors all on the CPU or all on CUDA.
    The optimizer is made before Accelerate moves them (to the GPU, or into FSDP's shards: fused on those too,
    tests/test_fsdp.py). On the CPU torch's default is its per-tensor loop (foreach is a CUDA default only): for
    MiniLM's 22.7M parameters on 2 cores one step took 0.20 s that way and 0.034 s fused (the same update to 3e-8)."""
    devices = {p.device.type for p in params}
    return len(devices) == 1 and devices <= {"cpu", "cuda"} and all(p.is_floating_point() for p in params)


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
    """Metrics as JSON lines in ``output_dir/metrics.jsonl``, and in the workspace's MLflow store when the run has a
    workspace."""

    def __init__(self, output_dir: Path, cfg: TrainConfig, run_name: str, accelerator: Any = None, workspace: Any = None):
        self.is_main = accelerator is None or accelerator.is_main_process
        self.path = Path(output_dir) / "metrics.jsonl"
        self.history: list[dict[str, Any]] = []
        self._mlflow = None
        if not self.is_main:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if not cfg.resume and self.path.exists():
            self.path.unlink()
        if cfg.mlflow and workspace is not None:
            self._mlflow = _start_mlflow_run(run_name, cfg, workspace)

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


def _start_mlflow_run(run_name: str, cfg: TrainConfig, workspace: Any) -> Any:
    """Start a run in the workspace's MLflow store; None when MLflow fails."""
    try:
        from tether.store.workspace import configure_mlflow

        mlflow = configure_mlflow(workspace.root)
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
        import atexit

        atexit.register(self.close)  # a run that stops on an error still gives the terminal back

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
# Saving
# ---------------------------------------------------------------------------------------------------------------


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
    workspace: Any = None,
) -> Path:
    """An ordinary Hugging Face directory plus ``tether.json`` (kind, base model, data digest, lineage, config,
    metrics, the prompt format of tether.models.hf; the lineage as tether.recipes.lineage.model_lineage writes it)."""
    from tether.recipes.lineage import model_lineage

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
        "lineage": model_lineage(json.loads(cfg.model_dump_json()), workspace=workspace),  # its snapshot and the models it came from
        "config": json.loads(cfg.model_dump_json()),
        "metrics": metrics,
        **(extra or {}),
    }
    if tokenizer is not None:  # how its prompts were rendered: later runs, sampling and scoring render them the same way
        from tether.models.hf import prompt_format

        meta["prompt_format"] = prompt_format(tokenizer)
    (output_dir / TETHER_META).write_text(json.dumps(meta, indent=2, sort_keys=True))
    return output_dir


# ---------------------------------------------------------------------------------------------------------------
# Memory on the CPU
# ---------------------------------------------------------------------------------------------------------------


def return_freed_memory() -> None:
    """Give the memory freed during the step back to the OS when the heap has grown (glibc's ``malloc_trim``; a
    no-op elsewhere).

    On the CPU, torch takes activations from malloc. glibc raises its mmap threshold to the size of the first large
    block freed (up to 32 MB), so later activations come from the heap; batches of new tensor sizes every step
    fragment it and freed blocks stay resident. With MiniLM at batch 16 x 256 tokens the RSS after a step crept from
    0.6 GB to 2.2 GB in 25 steps and peaked at 3.5 GB over an epoch, when the live tensors between steps are 0.3 GB
    (weights and AdamW state). Trimming after every step kept it near the live size but cost 7-10% of the step time
    (the next step faults the same pages in again), so the heap is trimmed only when the RSS after a step has grown
    by a quarter (at least 256 MB) over the first step's since the last trim: the working set a step needs stays
    resident, the creep of a fragmenting heap does not.
    """
    trim = _malloc_trim()
    rss = _rss_bytes() if trim is not None else None
    if rss is None:
        return
    baseline = _TRIM_STATE.get("baseline")
    if baseline is None:
        _TRIM_STATE["baseline"] = rss
    elif rss > baseline + max(256 * 2**20, baseline // 4):
        trim(0)
        _TRIM_STATE["baseline"] = None  # the next step's RSS, with its working set faulted in again


_TRIM_STATE: dict[str, int | None] = {"baseline": None}


def reset_memory_baseline() -> None:
    """Start a run's own heap baseline for ``return_freed_memory``."""
    _TRIM_STATE["baseline"] = None


def _rss_bytes() -> int | None:
    """This process's resident set size from ``/proc/self/statm`` (Linux), or None."""
    import os

    try:
        with open("/proc/self/statm", encoding="ascii") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return None


@functools.cache
def _malloc_trim() -> Any:
    import ctypes

    try:
        return getattr(ctypes.CDLL(None), "malloc_trim", None)  # glibc only (not musl, macOS or Windows)
    except (OSError, TypeError):
        return None
