"""Reward SPECs for online RL: what ``--reward`` accepts, parsed and loaded into one summed reward.

A SPEC is one of:
- ``DIR``: a reward-model folder written by ``tether train reward`` (``tether.models.reward_model.RewardModel``), or a Hugging
  Face sequence-classification reward model (its raw, unnormalized scale; a note says so). Prompts and the
  decoded completions are passed as text and re-tokenized with the reward model's own tokenizer, so it may differ
  from the policy's; the reward is read at the EOS the reward model appends. Scores are normalized (mean 0, std 1
  on the reward model's reference set). A rating model with several aspects needs their weights and signs:
  ``DIR:helpful=1,harm=-1`` (negative where higher is worse; every aspect named; 0 leaves one out), and each
  aspect is also logged on its own (``reward/<label>/<aspect>``).
- ``rules:FILE.yaml``: rule-based rewards and filters (``tether.checks.rules``); every rule is also logged on its own.
- ``ensemble:DIR[,DIR...][:COMBINE]``: a reward ensemble, its members combined into one conservative reward (Coste
  et al. 2023, "Reward Model Ensembles Help Mitigate Overoptimization"). The members are every head of every named
  reward model (a model trained with ``--ensemble K`` brings K bootstrap heads), and a DIR that holds no
  tether.json but member folders (``tether loop`` writes one: separately seeded models) brings each of them.
  COMBINE: ``mean`` (default), ``uwo=LAMBDA`` (uncertainty-weighted: mean - LAMBDA x the members' standard
  deviation) or ``min`` (worst case over the members). Logged: ``reward/<label>`` (the combined reward),
  ``reward/<label>/mean`` and ``reward/<label>/spread`` (the members' mean and standard deviation).
- ``py:FILE.py:FUNCTION``: your function ``FUNCTION(prompts: list[str], completions: list[str]) -> list[float]``
  (verifiable rewards: unit tests, checkers, exact match). Plain-text prompts come as they were given;
  conversations as the policy's rendered prompt text.

Several SPECs add up. Each may carry a weight after the last ``@``: ``rules:policy.yaml@0.5``, ``rm-1@2``; the
default weight is 1. (A path that itself contains ``@`` followed by a number needs an explicit ``@1`` at the end.)

Metrics: ``reward/<label>`` the mean weighted score of each SPEC (label: the folder name, the rules file stem or the
function name) and, for rules, ``rules/<rule>`` each rule's mean weighted contribution and ``rules/filtered``.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tether.errors import TetherError

if TYPE_CHECKING:  # torch is imported where scores are computed: parsing a SPEC stays light
    import torch


@dataclass
class RewardSpec:
    """One parsed SPEC. kind: "model", "ensemble", "rules" or "py"."""

    kind: str
    path: Path
    weight: float = 1.0
    function: str | None = None
    text: str = ""
    aspect_weights: dict[str, float] | None = None  # a rating model's DIR:ASPECT=W,... (tether.models.reward_model.split_aspect_weights)
    label: str = ""  # the name its metric is logged under: folder name, rules file stem or function name
    members: list[Path] = field(default_factory=list)  # an ensemble's folders, as given
    combine: str = "mean"  # an ensemble's combination: mean, uwo or min
    coef: float = 0.0  # uwo's LAMBDA

    def __post_init__(self) -> None:
        if not self.label:
            self.label = str(self.function) if self.kind == "py" else (self.path.stem if self.kind == "rules" else self.path.name)


COMBINES = ("mean", "uwo", "min")


def combine_members(members: torch.Tensor, combine: str = "mean", coef: float = 0.0) -> torch.Tensor:
    """One reward from an ensemble's member rewards (Coste et al. 2023, Sec. 3): ``mean``; ``uwo``, uncertainty-
    weighted, mean - coef x std (the population std over members; Coste et al. penalize the variance, the std
    keeps coef in reward units); ``min``, worst case over members.

    members: (B, K) normalized rewards. Returns (B,)."""
    if combine == "mean":
        return members.mean(dim=1)
    if combine == "uwo":
        return members.mean(dim=1) - coef * members.std(dim=1, unbiased=False)
    if combine == "min":
        return members.min(dim=1).values
    raise ValueError(f"unknown ensemble combination {combine!r}; valid: {', '.join(COMBINES)}")


def parse_combine(text: str, spec: str) -> tuple[str, float]:
    """``mean`` | ``min`` | ``uwo=LAMBDA`` -> (combine, coef)."""
    name, _, value = text.partition("=")
    if name == "uwo":
        try:
            coef = float(value)
        except ValueError:
            raise TetherError(f"--reward {spec!r}: uwo needs its LAMBDA, e.g. uwo=0.5", fix="write ensemble:DIR,DIR:uwo=0.5") from None
        if coef < 0:
            raise TetherError(f"--reward {spec!r}: uwo's LAMBDA must be >= 0", fix="write ensemble:DIR,DIR:uwo=0.5")
        return "uwo", coef
    if name in ("mean", "min") and not value:
        return name, 0.0
    raise TetherError(f"--reward {spec!r}: unknown ensemble combination {text!r}", fix="end with :mean, :min or :uwo=LAMBDA")


def member_folders(folder: Path) -> list[Path]:
    """The reward models an ensemble folder names: its subfolders that hold tether.json, sorted by name, when it
    holds none itself; else the folder itself (a reward model: its heads are members; a Hugging Face one too)."""
    if (folder / "tether.json").is_file() or not folder.is_dir():
        return [folder]
    return sorted(p for p in folder.iterdir() if (p / "tether.json").is_file()) or [folder]


def parse_spec(text: str) -> RewardSpec:
    """``DIR``, ``rules:FILE``, ``py:FILE:FUNCTION``, each with an optional ``@WEIGHT`` suffix (see module doc)."""
    raw, weight = text.strip(), 1.0
    if "@" in raw:
        head, tail = raw.rsplit("@", 1)
        try:
            weight = float(tail)
            raw = head
        except ValueError:
            pass  # an @ inside the path, not a weight
    if not raw:
        raise TetherError(f"--reward {text!r} is empty", fix="give a reward model folder, rules:FILE.yaml or py:FILE.py:FUNCTION")
    if raw.startswith("rules:"):
        return RewardSpec("rules", Path(raw[len("rules:") :]), weight, text=text)
    if raw.startswith("ensemble:"):
        body, combine, coef = raw[len("ensemble:") :], "mean", 0.0
        head, sep, tail = body.rpartition(":")
        if sep and head and (tail in ("mean", "min") or tail.startswith("uwo")):
            body = head
            combine, coef = parse_combine(tail, text)
        folders = [Path(part) for part in body.split(",") if part.strip()]
        weighted = [str(f) for f in folders if "=" in f.name and not f.exists()]
        if weighted:  # DIR:helpful=1,harm=-1 split at its commas would read as folders that do not exist
            raise TetherError(
                f"--reward {text!r}: aspect weights ({', '.join(weighted)}) cannot be given inside ensemble:",
                fix="name preference reward models as members; score a rating model on its own, as --reward DIR:helpful=1,harm=-1",
            )
        if not folders:
            raise TetherError(f"--reward {text!r}: no reward model folder after ensemble:", fix="write ensemble:DIR[,DIR...][:mean|:min|:uwo=LAMBDA]")
        label = folders[0].name if len(folders) == 1 else "ensemble"
        return RewardSpec("ensemble", folders[0], weight, text=text, label=label, members=folders, combine=combine, coef=coef)
    if raw.startswith("py:"):
        body = raw[len("py:") :]
        if ":" not in body:
            raise TetherError(f"--reward {text!r}: expected py:FILE.py:FUNCTION", fix="name the function after the file: py:checks.py:reward_fn")
        file, function = body.rsplit(":", 1)
        return RewardSpec("py", Path(file), weight, function=function, text=text)
    from tether.models.reward_model import split_aspect_weights

    folder, aspect_weights = split_aspect_weights(raw)
    return RewardSpec("model", Path(folder), weight, text=text, aspect_weights=aspect_weights)


def _load_function(spec: RewardSpec) -> Any:
    if not spec.path.is_file():
        raise TetherError(f"--reward {spec.text}: Python file not found: {spec.path}", fix="check the path after py:")
    module_spec = importlib.util.spec_from_file_location(f"tether_user_reward_{spec.path.stem}", spec.path)
    module = importlib.util.module_from_spec(module_spec)
    try:
        module_spec.loader.exec_module(module)
    except Exception as exc:
        raise TetherError(f"--reward {spec.text}: importing {spec.path} failed: {type(exc).__name__}: {exc}", fix="run the file with python to see the error") from None
    function = getattr(module, spec.function, None)
    if not callable(function):
        raise TetherError(f"--reward {spec.text}: {spec.path} has no function {spec.function!r}", fix="define def FUNCTION(prompts, completions) -> list[float]")
    return function


@dataclass
class Reward:
    """The sum of the weighted SPECs. ``score(prompts, prompt_texts, completions)`` -> (scores (B,), metrics)."""

    specs: list[RewardSpec]
    scorers: list[Any] = field(default_factory=list)
    batch_size: int = 32

    @property
    def reward_models(self) -> list[Any]:
        """The loaded reward models (tether.models.reward_model.RewardModel) of the model and ensemble SPECs, in
        order (an ensemble's members each)."""
        out: list[Any] = []
        for spec, scorer in zip(self.specs, self.scorers):
            if spec.kind == "model":
                out.append(scorer)
            elif spec.kind == "ensemble":
                out.extend(scorer)
        return out

    def score(self, prompts: Sequence[Any], prompt_texts: Sequence[str], completions: Sequence[str]) -> tuple[torch.Tensor, dict[str, float]]:
        """``prompts`` as given (strings or message lists, for reward models, which render them as their own
        tokenizer does); ``prompt_texts`` rendered for the policy (Python functions get them for conversations);
        ``completions`` decoded text.
        Returns scores (B,) float32 and the per-component metrics."""
        import torch

        total = torch.zeros(len(completions))
        metrics: dict[str, float] = {}
        for spec, scorer in zip(self.specs, self.scorers):
            if spec.kind == "model":
                normalized = scorer.normalized_scores(list(prompts), list(completions), batch_size=self.batch_size).mean(axis=1)  # (B, A)
                values = torch.as_tensor(scorer.combine(normalized), dtype=torch.float32)
                if len(scorer.aspects) > 1:
                    for a, aspect in enumerate(scorer.aspects):
                        metrics[f"reward/{spec.label}/{aspect}"] = float(normalized[:, a].mean()) if len(normalized) else 0.0
            elif spec.kind == "ensemble":
                members = ensemble_members(scorer, prompts, completions, self.batch_size)  # (B, K)
                values = combine_members(members, spec.combine, spec.coef)
                metrics[f"reward/{spec.label}/mean"] = float(members.mean()) if len(members) else 0.0
                metrics[f"reward/{spec.label}/spread"] = float(members.std(dim=1, unbiased=False).mean()) if len(members) else 0.0
            elif spec.kind == "rules":
                result = scorer.score(list(completions), list(prompts))
                values = torch.tensor(result.total, dtype=torch.float32)
                for key, value in result.metrics().items():
                    metrics[key] = metrics.get(key, 0.0) + spec.weight * value
            else:  # plain-text prompts as given (not wrapped in the policy's chat template), conversations rendered
                texts = [p if isinstance(p, str) else t for p, t in zip(prompts, prompt_texts)]
                values = self._call_function(spec, scorer, texts, completions)
            total += spec.weight * values
            metrics[f"reward/{spec.label}"] = spec.weight * float(values.mean()) if len(values) else 0.0
        return total, metrics

    def members(self, prompts: Sequence[Any], completions: Sequence[str]) -> torch.Tensor:
        """The member rewards (B, K) of the first ensemble SPEC (a model SPEC's heads when there is none)."""
        for spec, scorer in zip(self.specs, self.scorers):
            if spec.kind in ("ensemble", "model"):
                return ensemble_members(scorer if spec.kind == "ensemble" else [scorer], prompts, completions, self.batch_size)
        raise TetherError("no reward model among the rewards", fix="add --reward ensemble:DIR or a reward model folder")

    @staticmethod
    def _call_function(spec: RewardSpec, function: Any, prompt_texts: Sequence[str], completions: Sequence[str]) -> torch.Tensor:
        import torch

        try:
            values = function(list(prompt_texts), list(completions))
        except Exception as exc:
            raise TetherError(f"--reward {spec.text}: {spec.function} raised {type(exc).__name__}: {exc}", fix="fix the reward function") from None
        try:
            values = torch.as_tensor([float(v) for v in values], dtype=torch.float32)
        except (TypeError, ValueError):
            raise TetherError(f"--reward {spec.text}: {spec.function} must return a list of numbers", fix="return one float per completion") from None
        if len(values) != len(completions):
            raise TetherError(f"--reward {spec.text}: {spec.function} returned {len(values)} values for {len(completions)} completions", fix="return one float per completion")
        return values


def ensemble_members(models: Sequence[Any], prompts: Sequence[Any], completions: Sequence[str], batch_size: int = 32) -> torch.Tensor:
    """Every member's normalized reward, (B, K): each model's heads side by side, in the order given."""
    import numpy as np
    import torch

    parts = [m.score_members(list(prompts), list(completions), batch_size=batch_size) for m in models]  # (B, K_m) each
    return torch.as_tensor(np.concatenate(parts, axis=1), dtype=torch.float32)


def load_reward(spec_texts: Sequence[str], *, device: str | None = None, batch_size: int = 32, bf16: bool = False, say: Callable[[str], None] | None = None) -> Reward:
    """Parse and load every SPEC; a clear ``TetherError`` for anything that does not load (a rating model without
    its aspects' weights too, before any training). ``say`` gets the notes (a foreign reward model's scale)."""
    from tether.checks.rules import load_rules

    if not spec_texts:
        raise TetherError("no reward given", fix="add --reward DIR, --reward rules:FILE.yaml or --reward py:FILE.py:FUNCTION")
    specs = [parse_spec(t) for t in spec_texts]
    scorers: list[Any] = []
    for spec in specs:
        if spec.kind == "rules":
            scorers.append(load_rules(spec.path))
        elif spec.kind == "py":
            scorers.append(_load_function(spec))
        elif spec.kind == "ensemble":
            scorers.append(_load_ensemble(spec, device=device, bf16=bf16, say=say))
        else:
            scorers.append(_load_reward_model(spec, device=device, bf16=bf16, say=say))
    labels = [s.label for s in specs]
    for i, spec in enumerate(specs):  # two SPECs with one label: number them so both are logged
        if labels.count(spec.label) > 1:
            spec.label = f"{spec.label}_{i + 1}"
    return Reward(specs, scorers, batch_size)


def _load_ensemble(spec: RewardSpec, *, device: str | None, bf16: bool, say: Callable[[str], None] | None = None) -> list[Any]:
    folders = [m for folder in spec.members for m in member_folders(folder)]
    if not folders:
        raise TetherError(f"--reward {spec.text}: no reward model in {', '.join(map(str, spec.members))}", fix="name reward model folders, or a folder of them (tether loop writes one)")
    models = [_load_reward_model(RewardSpec("model", folder, text=spec.text), device=device, bf16=bf16, say=say) for folder in folders]
    if spec.combine != "mean" and sum(m.ensemble for m in models) < 2:
        raise TetherError(f"--reward {spec.text}: {spec.combine} over a single member is the member itself", fix="name two or more members (or a model trained with --ensemble K)")
    return models


def _load_reward_model(spec: RewardSpec, *, device: str | None, bf16: bool, say: Callable[[str], None] | None = None) -> Any:
    if not spec.path.exists():
        raise TetherError(
            f"--reward {spec.text}: no such reward model folder",
            fix="give a folder written by `tether train reward`, rules:FILE.yaml or py:FILE.py:FUNCTION",
        )
    from tether.models.reward_model import RewardModel

    try:
        model = RewardModel.load(spec.path, device=device, bf16=bf16, aspect_weights=spec.aspect_weights, say=say)
        model.aspect_vector()  # several aspects and no weights: refused now, not at the first rollout
    except TetherError as exc:
        raise TetherError(f"--reward {spec.text}: {exc.message}", fix=exc.fix) from None
    except Exception as exc:  # a broken folder: missing weights, wrong config
        raise TetherError(f"--reward {spec.text}: the reward model does not load ({type(exc).__name__}: {exc})", fix="check the folder; retrain with `tether train reward`") from None
    model.model.eval()
    for param in model.model.parameters():
        param.requires_grad_(False)
    return model
