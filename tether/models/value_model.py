"""PPO's value model (the critic): a transformer with a scalar head read at every token, and where it starts.

It starts from the reward model when the first reward SPEC is a reward-model folder that is a decoder sharing the
policy's tokenizer (its head and its normalization carried over, so the first values are the reward model's
normalized scores); otherwise, or when the reward model is an encoder or tokenizes differently, from the policy's
weights with a new scalar head; ``critic=FOLDER`` picks another start.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from tether.errors import TetherError
from tether.models.hf import check_model_path, load_tokenizer, read_tether_meta
from tether.models.reward_model import aspect_weight_vector, split_aspect_weights


class ValueModel(torch.nn.Module):
    """A sequence-classification transformer read at every token: ``values (B, T)``.

    ``model`` is a Hugging Face ``*ForSequenceClassification`` (its backbone and ``score`` head); the outputs of
    a reward model (ensemble members x rating aspects) are normalized with ``out_mean``/``out_std`` and summed with
    ``out_weight`` (default: their mean; a rating model's aspects by their weights, averaged over members).
    """

    def __init__(self, model: Any, out_mean: torch.Tensor | None = None, out_std: torch.Tensor | None = None, out_weight: torch.Tensor | None = None):
        super().__init__()
        self.model = model
        outputs = self._inner().score.out_features
        self.register_buffer("out_mean", out_mean if out_mean is not None else torch.zeros(outputs))
        self.register_buffer("out_std", out_std if out_std is not None else torch.ones(outputs))
        self.register_buffer("out_weight", out_weight if out_weight is not None else torch.full((outputs,), 1.0 / outputs))

    def _inner(self) -> Any:
        return self.model.get_base_model() if hasattr(self.model, "get_base_model") else self.model

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, position_ids: torch.Tensor) -> torch.Tensor:
        inner = self._inner()
        backbone = getattr(inner, inner.base_model_prefix)
        hidden = backbone(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids, use_cache=False).last_hidden_state
        raw = inner.score(hidden).float()  # (B, T, K)
        return ((raw - self.out_mean) / self.out_std) @ self.out_weight


def load_critic(cfg: Any, policy_tokenizer: Any, reward_models: list[Any]) -> tuple[ValueModel, str]:
    """The value model and a line saying where it started (see the module doc). ``reward_models``: the reward models
    of the SPECs in order, loaded (tether.models.reward_model.RewardModel) or as folders (``DIR`` or ``DIR:ASPECT=W,...``)."""
    import numpy as np
    from transformers import AutoModelForSequenceClassification
    from transformers.utils import logging as hf_logging


    first = reward_models[0] if reward_models else None
    if cfg.critic or first is None:
        source, aspect_weights = split_aspect_weights(cfg.critic or cfg.model)
    elif isinstance(first, (str, Path)):
        source, aspect_weights = split_aspect_weights(first)
    else:
        source, aspect_weights = first.source, first.aspect_weights
    meta = read_tether_meta(Path(source)) if Path(source).is_dir() else {}
    if meta.get("kind") == "reward":
        same_vocab = load_tokenizer(source).get_vocab() == policy_tokenizer.get_vocab()
        model = AutoModelForSequenceClassification.from_pretrained(source, dtype=torch.float32)  # trained: fp32 master weights
        if same_vocab and hasattr(model, "score"):
            info = meta.get("reward", {})
            norm, members = info.get("normalization"), int(info.get("ensemble", 1))
            mean = torch.tensor(np.asarray(norm["mean"], dtype=np.float32).reshape(-1)) if norm else None
            std = torch.tensor(np.asarray(norm["std"], dtype=np.float32).reshape(-1)) if norm else None
            # the reward as RewardModel reads it: members averaged, a rating model's aspects by their weights
            aspects = aspect_weight_vector(list(info.get("aspects", ["reward"])), aspect_weights, str(source))
            weight = torch.tensor(np.outer(np.full(members, 1.0 / members), aspects).reshape(-1), dtype=torch.float32)
            return ValueModel(model, mean, std, weight), f"critic from the reward model {source}"
        why = "an encoder" if not hasattr(model, "score") else "a different tokenizer"
        if cfg.critic:
            raise TetherError(f"critic {source}: a reward model with {why} cannot value the policy's tokens", fix="drop --set critic (the policy is used)")
        source, note = cfg.model, f"critic from the policy with a new scalar head (the reward model has {why})"
    else:
        note = f"critic from {source} with a new scalar head"
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # the new head is expected
    try:
        model = AutoModelForSequenceClassification.from_pretrained(
            check_model_path(source, "critic"), num_labels=1, dtype=torch.float32
        )
    except (OSError, ValueError) as exc:
        raise TetherError(f"cannot load a critic from {source}: {exc}", fix="point critic at a Hugging Face model folder") from None
    finally:
        hf_logging.set_verbosity(verbosity)
    model.config.pad_token_id = policy_tokenizer.pad_token_id
    return ValueModel(model), note
