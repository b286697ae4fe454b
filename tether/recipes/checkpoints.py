"""Checkpoints and the rules of a run's output folder, the same for every trainer: what an earlier run left there,
what makes a checkpoint this run's, and resuming only a run's own checkpoint."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path
from typing import Any

import torch

from tether.errors import TetherError
from tether.models.hf import TETHER_META
from tether.recipes.configs import TrainConfig

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
    from tether.recipes.configs import RESUME_MAY_CHANGE

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
    from tether.recipes.configs import option_name

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
        # What a trainer keeps beside the model and optimizer (name -> an object with state_dict / load_state_dict):
        # saved by every process as NAME-RANK.pt (under FSDP each process holds its own shard of it)
        self.process_states: dict[str, Any] = {}
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
        from tether.recipes.configs import option_name

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
        rank = self.accelerator.process_index
        for name, obj in self.process_states.items():
            saved = path / f"{name}-{rank}.pt"
            if not saved.is_file():
                raise TetherError(
                    f"the checkpoint {path} holds no {name} state ({saved.name}): it was written by an older Tether, so resuming would lose what the run kept",
                    fix="train again with --overwrite, or choose a new --output-dir",
                )
            obj.load_state_dict(torch.load(saved, map_location="cpu", weights_only=True))
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
        for name, obj in self.process_states.items():
            torch.save(obj.state_dict(), path / f"{name}-{self.accelerator.process_index}.pt")
        self.accelerator.wait_for_everyone()  # every process's states are written before trainer_state.json marks it done
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
