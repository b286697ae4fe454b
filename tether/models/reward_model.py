"""Reward models: loading a saved one and scoring with it; the tokenization and forward pass training shares.

The stable interface other parts of Tether use (PPO, active learning, monitoring, the demo)::

    from tether.models.reward_model import RewardModel

    rm = RewardModel.load("artifacts/models/rm-1")               # a folder written by `tether train reward`
    rewards = rm.score(prompts, completions, batch_size=32)      # np.ndarray (N,), normalized, ensemble mean
    mean, spread = rm.score_with_spread(prompts, completions)    # (N,), (N,): ensemble mean and std over members
    members = rm.score_members(prompts, completions)             # (N, K) normalized reward of each member
    rating = RewardModel.load("rm-ratings:helpful=1,harm=-1")    # a rating model: how its aspects add up

Prompts and completions are strings, or chat message lists (``[{"role", "content"}, ...]``), rendered as the
model's ``prompt_format`` says (tether.models.hf). Rewards are normalized with the statistics saved at training
time: mean 0 and std 1 over (a sample of) the training prompts' chosen completions, or the reference set given
at training, per ensemble member. A rating model (``objective: rating``) has one output per aspect:
``score_aspects`` gives each one; one reward needs each aspect's weight and sign (``DIR:helpful=1,harm=-1``,
negative where higher is worse): it is never an equal average. A Hugging Face sequence-classification model
without tether.json loads too, on its own raw scale.

Where the reward is read: encoders (BERT-like) through their own pooler on the first token; decoders (Llama,
Qwen2, GPT-2 ...; the model has a ``score`` head) at the last real token of prompt+completion, which is the EOS
that ``encode`` appends, found from the attention mask, never at padding. With right padding and a pad token that
differs from EOS this is the same token Hugging Face's own ``*ForSequenceClassification`` forward reads, so the
saved folder gives the same raw rewards through ``AutoModelForSequenceClassification``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from tether.errors import TetherError
from tether.models.tokens import completion_tokens, encode_many, special_tokens_around

# ---------------------------------------------------------------------------------------------------------------
# Tokenization: prompt + completion -> ids, keeping the end of the prompt and the whole completion
# ---------------------------------------------------------------------------------------------------------------


# ---------------------------------------------------------------------------------------------------------------
# Model: loading a backbone with a scalar (or K x A) head; the forward pass that reads rewards
# ---------------------------------------------------------------------------------------------------------------


def load_reward_backbone(path: str | Path, num_labels: int, pad_token_id: int, *, bf16: bool = False) -> Any:
    """``AutoModelForSequenceClassification`` with ``num_labels`` outputs (a new head on a base model)."""
    from transformers import AutoModelForSequenceClassification
    from transformers.utils import logging as hf_logging

    from tether.models.hf import check_model_path, refuse_adapter

    source = check_model_path(path, "model")
    refuse_adapter(source)
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # "some weights are newly initialized": the head is new on purpose
    hf_logging.disable_progress_bar()
    try:
        model = AutoModelForSequenceClassification.from_pretrained(
            source, num_labels=num_labels, dtype=torch.bfloat16 if bf16 else torch.float32, ignore_mismatched_sizes=True
        )
    except (OSError, ValueError, KeyError) as exc:
        raise TetherError(f"cannot load {source} as a sequence classifier: {exc}", fix="point --model at a Hugging Face encoder or decoder folder") from None
    finally:
        hf_logging.set_verbosity(verbosity)
    model.config.pad_token_id = pad_token_id
    model.config.problem_type = "regression"
    return model


def backbone_profile(path: str | Path) -> dict[str, Any]:
    """What a backbone is, read from its config without loading weights: ``{"kind": "encoder" | "decoder",
    "parameters": N, "model_type": ...}`` (the sequence classifier built on the meta device, its parameters counted)."""
    from transformers import AutoConfig, AutoModelForSequenceClassification

    from tether.models.hf import check_model_path, refuse_adapter

    source = check_model_path(path, "model")
    refuse_adapter(source)
    try:
        config = AutoConfig.from_pretrained(source, num_labels=1)
        with torch.device("meta"):
            model = AutoModelForSequenceClassification.from_config(config)
    except (OSError, ValueError, KeyError) as exc:
        raise TetherError(f"cannot read {source} as a sequence classifier: {exc}", fix="point --model at a Hugging Face encoder or decoder folder") from None
    return {"kind": "decoder" if reads_last_token(model) else "encoder", "parameters": sum(p.numel() for p in model.parameters()), "model_type": config.model_type}


def output_head(model: Any) -> torch.nn.Linear:
    """The linear layer that writes a sequence classifier's outputs (BERT's ``classifier``, RoBERTa's
    ``classifier.out_proj``, a decoder's ``score``; under LoRA the trainable copy): the last ``Linear`` whose
    ``out_features`` is the model's ``num_labels``."""
    labels = unwrap_peft(model).config.num_labels
    heads = [m for m in model.modules() if isinstance(m, torch.nn.Linear) and m.out_features == labels]
    if not heads:
        raise TetherError(f"no output layer of {labels} outputs found in {type(unwrap_peft(model)).__name__}", fix="use a *ForSequenceClassification model whose head ends in a Linear layer")
    return heads[-1]


def drop_extra_outputs(model: Any, keep: int) -> None:
    """Keep the first ``keep`` outputs of a sequence classifier (its head's first rows; ``config.num_labels`` too):
    a head trained beside the reward (ODIN's length head) leaves no trace in the saved model."""
    head = output_head(model)
    with torch.no_grad():
        head.weight = torch.nn.Parameter(head.weight[:keep].clone())
        if head.bias is not None:
            head.bias = torch.nn.Parameter(head.bias[:keep].clone())
    head.out_features = keep
    model.config.num_labels = keep
    if hasattr(model, "num_labels"):
        model.num_labels = keep


def unwrap_peft(model: Any) -> Any:
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def reads_last_token(model: Any) -> bool:
    """True for decoder classifiers (a ``score`` head over the last token); False for encoders (pooler)."""
    return hasattr(unwrap_peft(model), "score")


class RewardForward(torch.nn.Module):
    """``(input_ids, attention_mask) -> rewards (B, num_labels)``; right padding. Lists of tensors run one pass
    each and give the rows of all passes in order.

    Decoders: the head is applied to the hidden state of the last real token (index ``mask.sum(-1) - 1``), so a
    pad token equal to EOS cannot move it. Encoders: the model's own classifier over its pooled first token.
    Decoders also take rows that hold several sequences (``position_ids``, a (B, 1, T, T) ``attention_mask`` and
    ``read_at`` (B, k), the positions whose rewards to return: (B * k, num_labels), row by row).
    This module is what Accelerate wraps (DDP needs one forward over all trainable parameters).
    """

    def __init__(self, model: Any):
        super().__init__()
        self.model = model
        self.last_token = reads_last_token(model)

    def forward(self, input_ids: Any, attention_mask: Any, position_ids: Any = None, read_at: Any = None) -> torch.Tensor:
        if isinstance(input_ids, list):  # several forward passes, one call (what DDP sees), outputs concatenated
            n = len(input_ids)
            # _one_pass, not self(...): Accelerate wraps this forward in ONE autocast object, and re-entering it
            # from inside left bf16 autocast switched on for the rest of the process.
            return torch.cat([self._one_pass(*args) for args in zip(input_ids, attention_mask, position_ids or [None] * n, read_at or [None] * n)])
        return self._one_pass(input_ids, attention_mask, position_ids, read_at)

    def _one_pass(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, position_ids: Any, read_at: Any) -> torch.Tensor:
        if not self.last_token:
            with first_token_last_layer(self.model):
                return self.model(input_ids=input_ids, attention_mask=attention_mask).logits
        hf = unwrap_peft(self.model)
        if attention_mask.dim() == 4 and hf.config._attn_implementation == "eager":
            attention_mask = torch.zeros(attention_mask.shape, device=attention_mask.device).masked_fill(~attention_mask, torch.finfo(torch.float32).min)
        hidden = hf.base_model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids, use_cache=False).last_hidden_state  # (B, T, H)
        if read_at is None:
            read_at = (attention_mask.sum(-1) - 1).unsqueeze(1)  # (B, 1): the last real token
        rows = torch.arange(hidden.shape[0], device=hidden.device).unsqueeze(1).expand_as(read_at)
        return hf.score(hidden[rows.reshape(-1), read_at.reshape(-1)])

    def takes_branch_masks(self) -> bool:
        """True for decoders whose attention takes a custom (B, 1, T, T) mask (sdpa, eager)."""
        return self.last_token and unwrap_peft(self.model).config._attn_implementation in ("sdpa", "eager")


# Encoders whose classifier reads the first token alone (BERT's pooler, RoBERTa's head), and whose layers are BERT's.
FIRST_TOKEN_READERS = ("BertForSequenceClassification", "RobertaForSequenceClassification", "XLMRobertaForSequenceClassification")


class first_token_last_layer:  # noqa: N801 (a context manager used as a function)
    """While active, the encoder's last layer computes the first token's output alone: keys and values of every
    token, the query, attention output and feed-forward of the first (the others' last-layer outputs are never read:
    the classifier reads token 0). The same reward and gradients, without 5/6 of the last layer's work (for
    MiniLM-L6, about 14% of the forward and backward). Other models, and masks it cannot slice, run as they are."""

    def __init__(self, model: Any):
        hf = unwrap_peft(model)
        layers = getattr(getattr(getattr(hf, "base_model", None), "encoder", None), "layer", None)
        fits = type(hf).__name__ in FIRST_TOKEN_READERS and layers is not None and len(layers) > 0
        self.layer = layers[-1] if fits and not getattr(hf.config, "add_cross_attention", False) else None

    def __enter__(self) -> None:
        if self.layer is not None:
            layer = self.layer
            self.layer.forward = lambda hidden, mask=None, *args, **kwargs: _first_token_layer(layer, hidden, mask, *args, **kwargs)

    def __exit__(self, *exc: Any) -> None:
        if self.layer is not None:
            del self.layer.forward  # the class's own forward again


def _first_token_layer(layer: Any, hidden: torch.Tensor, mask: Any, *args: Any, **kwargs: Any) -> torch.Tensor:
    """A BERT layer's output at the first position only, (B, 1, H), from hidden states (B, T, H)."""
    if mask is not None and mask.dim() != 4:  # a (B, T) mask of another attention kernel: the whole layer
        return type(layer).forward(layer, hidden, mask, *args, **kwargs)
    att = layer.attention.self
    b = hidden.shape[0]
    first = hidden[:, :1]
    heads = lambda x: x.view(b, x.shape[1], att.num_attention_heads, att.attention_head_size).transpose(1, 2)  # noqa: E731
    if mask is not None and mask.shape[-2] > 1:
        mask = mask[:, :, :1, :]  # the first query's row
    out = torch.nn.functional.scaled_dot_product_attention(
        heads(att.query(first)), heads(att.key(hidden)), heads(att.value(hidden)), attn_mask=mask,
        dropout_p=att.dropout.p if layer.training else 0.0, scale=getattr(att, "scaling", None),
    )
    attended = layer.attention.output(out.transpose(1, 2).reshape(b, 1, -1), first)  # projection, residual, norm
    return layer.feed_forward_chunk(attended)


@torch.no_grad()
def raw_rewards(forward: torch.nn.Module, sequences: list[list[int]], pad_id: int, batch_size: int, device: Any) -> torch.Tensor:
    """Raw head outputs (N, num_labels) float32 for token sequences, batched by length, in the input order."""
    from tether.data.batching import pad_right

    was_training = forward.training
    forward.eval()
    order = sorted(range(len(sequences)), key=lambda i: len(sequences[i]))
    outputs: list[torch.Tensor] = []
    for start in range(0, len(order), batch_size):
        chunk = [sequences[i] for i in order[start : start + batch_size]]
        ids, mask = pad_right(chunk, pad_id)
        outputs.append(forward(ids.to(device), mask.to(device)).float().cpu())
    forward.train(was_training)
    if not outputs:
        return torch.zeros((0, 1))
    result = torch.empty((len(sequences), outputs[0].shape[1]))
    result[torch.tensor(order)] = torch.cat(outputs)
    return result


# ---------------------------------------------------------------------------------------------------------------
# RewardModel: load a saved folder and score
# ---------------------------------------------------------------------------------------------------------------


def split_aspect_weights(text: str | Path) -> tuple[str, dict[str, float] | None]:
    """``DIR:ASPECT=W,ASPECT=W`` -> (``DIR``, {aspect: weight}); a plain ``DIR`` -> (``DIR``, None).

    The weights say how a rating model's aspects add up to one reward: ``rm:helpful=1,harm=-2`` (a negative weight
    for an aspect where higher is worse; 0 leaves one out). A folder whose own name ends like that wins.
    """
    text = str(text)
    head, sep, tail = text.rpartition(":")
    if not sep or not head or "=" not in tail or Path(text).exists():
        return text, None
    weights: dict[str, float] = {}
    for part in tail.split(","):
        name, eq, value = part.partition("=")
        try:
            weights[name.strip()] = float(value)
        except ValueError:
            raise TetherError(f"{text!r}: aspect weight {part!r} is not ASPECT=NUMBER", fix="write DIR:helpful=1,harm=-1") from None
        if not eq or not name.strip():
            raise TetherError(f"{text!r}: aspect weight {part!r} is not ASPECT=NUMBER", fix="write DIR:helpful=1,harm=-1")
    return head, weights


def is_hf_reward_model(folder: Path) -> bool:
    """A Hugging Face ``*ForSequenceClassification`` folder (config.json names such an architecture)."""
    import json

    try:
        config = json.loads((Path(folder) / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return any(str(a).endswith("ForSequenceClassification") for a in config.get("architectures") or [])


def aspect_weight_vector(aspects: list[str], weights: dict[str, float] | None, source: str) -> np.ndarray:
    """The weight of each aspect, (A,): 1 for a single aspect. Several need ``weights`` naming every aspect (else a
    clear error: an equal average would turn an aspect where higher is worse into a reward for it)."""
    example = f"{source}:" + ",".join(f"{a}={1 if i == 0 else -1}" for i, a in enumerate(aspects))
    if weights is None:
        if len(aspects) == 1:
            return np.ones(1)
        raise TetherError(
            f"{source} rates {len(aspects)} aspects ({', '.join(aspects)}): one reward needs their weights and signs",
            fix=f"give them after the folder, e.g. {example} (negative where higher is worse)",
        )
    unknown = sorted(set(weights) - set(aspects))
    missing = [a for a in aspects if a not in weights]
    if unknown or missing:
        problem = f"unknown aspect(s) {', '.join(unknown)}" if unknown else f"no weight for {', '.join(missing)}"
        raise TetherError(f"{source}: {problem}; its aspects are {', '.join(aspects)}", fix=f"name every aspect once, e.g. {example} (0 leaves one out)")
    return np.asarray([float(weights[a]) for a in aspects], dtype=np.float64)


class RewardModel:
    """A trained reward model: ``load`` a folder written by ``tether train reward`` (or any Hugging Face
    sequence-classification reward model), then ``score``.

    Attributes: ``meta`` (tether.json), ``ensemble`` (K), ``aspects`` (names; ``["reward"]`` for pairwise models),
    ``aspect_weights`` (how several aspects add up to one reward, ``None`` until given), ``max_length``,
    ``mean``/``std`` (K, A) the normalization applied to raw outputs, ``normalized`` (False for a foreign model:
    its raw scale).
    """

    def __init__(self, model: Any, tokenizer: Any, meta: dict[str, Any], device: Any = "cpu", *, aspect_weights: dict[str, float] | None = None, source: str = "the reward model"):
        info = meta.get("reward", {})
        self.model, self.tokenizer, self.meta, self.device, self.source = model, tokenizer, meta, torch.device(device), source
        self.ensemble = int(info.get("ensemble", 1))
        self.aspects = list(info.get("aspects", ["reward"]))
        self.max_length = int(info.get("max_length", meta.get("config", {}).get("max_length", 512)))
        outputs = self.ensemble * len(self.aspects)
        self.normalized = bool(info.get("normalization"))
        norm = info.get("normalization") or {"mean": [0.0] * outputs, "std": [1.0] * outputs}
        self.mean = np.asarray(norm["mean"], dtype=np.float64).reshape(self.ensemble, len(self.aspects))
        self.std = np.asarray(norm["std"], dtype=np.float64).reshape(self.ensemble, len(self.aspects))
        correction = norm.get("length_correction")  # tether.recipes.reward_length: reward per log(1 + tokens), subtracted
        self.length_slope = None if correction is None else np.asarray(correction["slope"], dtype=np.float64).reshape(self.ensemble, len(self.aspects))
        self.aspect_weights = None
        if aspect_weights is not None:
            self.set_aspect_weights(aspect_weights)
        self.forward = RewardForward(model).to(self.device).eval()

    @classmethod
    def load(cls, model_dir: str | Path, *, device: str | None = None, bf16: bool = False, aspect_weights: dict[str, float] | None = None, say: Callable[[str], None] | None = None) -> RewardModel:
        """Load a reward model folder (clear TetherError when it is not one). ``model_dir`` may carry aspect weights
        (``DIR:helpful=1,harm=-1``, see ``split_aspect_weights``). A Hugging Face sequence-classification model
        without tether.json is accepted as it is (its raw scores, unnormalized; ``say`` gets a note)."""
        from transformers import AutoModelForSequenceClassification

        from tether.models.hf import load_tokenizer, read_tether_meta

        text, weights = split_aspect_weights(model_dir)
        model_dir = Path(text)
        if not model_dir.is_dir():
            raise TetherError(f"reward model folder not found: {model_dir}", fix="point --model at the --output-dir of `tether train reward`")
        meta = read_tether_meta(model_dir)
        if meta.get("kind") != "reward":
            if meta or not is_hf_reward_model(model_dir):
                raise TetherError(
                    f"{model_dir} is not a Tether reward model (tether.json with kind 'reward') nor a Hugging Face *ForSequenceClassification model",
                    fix="train one with `tether train reward`, or give a Hugging Face sequence-classification reward model",
                )
            meta = None
        tokenizer = load_tokenizer(model_dir, say=say)  # the pad-token note and the template line go to say
        from transformers.utils import logging as hf_logging

        device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        hf_logging.disable_progress_bar()
        model = AutoModelForSequenceClassification.from_pretrained(str(model_dir), dtype=torch.bfloat16 if bf16 else torch.float32)
        if meta is None:  # a Hugging Face reward model: its own head, its own scale
            meta = _foreign_meta(model, tokenizer)
            if say is not None:
                say(f"note: {model_dir} has no tether.json: used as a Hugging Face reward model; its scores are its raw outputs, unnormalized (not mean 0, std 1 like a Tether reward model's)")
        return cls(model, tokenizer, meta, device, aspect_weights=weights if weights is not None else aspect_weights, source=str(model_dir))

    def set_aspect_weights(self, weights: dict[str, float]) -> None:
        """How the aspects add up to one reward: every aspect named, with its weight (negative where higher is worse)."""
        aspect_weight_vector(self.aspects, weights, self.source)  # checks the names
        self.aspect_weights = {a: float(weights[a]) for a in self.aspects}

    def aspect_vector(self) -> np.ndarray:
        """The weight of each aspect, (A,) (see ``aspect_weight_vector``)."""
        return aspect_weight_vector(self.aspects, self.aspect_weights, self.source)

    def raw_scores(self, prompts: Sequence[Any], completions: Sequence[Any], batch_size: int = 32) -> np.ndarray:
        """Unnormalized rewards, shape (N, K, A): the head outputs, less the length correction's slope x log(1 +
        completion tokens) when the model was trained with one. Over-long items keep the end of their completion."""
        if len(prompts) != len(completions):
            raise ValueError(f"{len(prompts)} prompts but {len(completions)} completions")
        sequences = encode_many(self.tokenizer, prompts, completions, self.max_length)
        for i, seq in enumerate(sequences):
            if seq is None:  # scoring never drops an item: keep the completion's end instead
                sequences[i] = self._keep_completion_end(completions[i], prompts[i])
        raw = raw_rewards(self.forward, sequences, self.tokenizer.pad_token_id, batch_size, self.device)
        raw = raw.numpy().astype(np.float64).reshape(len(sequences), self.ensemble, len(self.aspects))
        if self.length_slope is not None:
            tokens = np.asarray(completion_tokens(self.tokenizer, prompts, completions), dtype=np.float64)
            raw = raw - np.log1p(tokens)[:, None, None] * self.length_slope
        return raw

    def _keep_completion_end(self, completion: Any, prompt: Any) -> list[int]:
        (seq,) = encode_many(self.tokenizer, [""], [completion], 10**9)
        prefix, suffix = special_tokens_around(self.tokenizer)
        body = seq[len(prefix) : len(seq) - len(suffix)]
        return prefix + body[len(body) - (self.max_length - len(prefix) - len(suffix)) :] + suffix

    def normalized_scores(self, prompts: Sequence[Any], completions: Sequence[Any], batch_size: int = 32) -> np.ndarray:
        """Normalized head outputs, (N, K, A)."""
        return (self.raw_scores(prompts, completions, batch_size) - self.mean) / self.std

    def combine(self, per_aspect: np.ndarray) -> np.ndarray:
        """(..., A) scores -> (...) one reward: the aspects weighted by ``aspect_vector``."""
        return per_aspect @ self.aspect_vector()

    def score_members(self, prompts: Sequence[Any], completions: Sequence[Any], batch_size: int = 32) -> np.ndarray:
        """Normalized reward of each ensemble member, (N, K); a rating model's aspects weighted by ``aspect_weights``."""
        weights = self.aspect_vector()  # before the forward passes: a missing weight fails at once
        return self.normalized_scores(prompts, completions, batch_size) @ weights

    def score(self, prompts: Sequence[Any], completions: Sequence[Any], batch_size: int = 32) -> np.ndarray:
        """Normalized reward (ensemble mean), shape (N,)."""
        return self.score_members(prompts, completions, batch_size).mean(axis=1)

    def score_with_spread(self, prompts: Sequence[Any], completions: Sequence[Any], batch_size: int = 32) -> tuple[np.ndarray, np.ndarray]:
        """(mean (N,), spread (N,)): the ensemble's mean and standard deviation over members (0 when K = 1)."""
        members = self.score_members(prompts, completions, batch_size)
        return members.mean(axis=1), members.std(axis=1)

    def score_aspects(self, prompts: Sequence[Any], completions: Sequence[Any], batch_size: int = 32) -> dict[str, np.ndarray]:
        """Rating models: each aspect's normalized score (ensemble mean), {aspect: (N,)}."""
        normalized = self.normalized_scores(prompts, completions, batch_size)
        return {aspect: normalized[:, :, a].mean(axis=1) for a, aspect in enumerate(self.aspects)}


def _foreign_meta(model: Any, tokenizer: Any) -> dict[str, Any]:
    """What a Hugging Face reward model without tether.json is: one output per label (several: aspects named by
    its labels), no normalization, its context length."""
    config = model.config
    labels = int(getattr(config, "num_labels", 1) or 1)
    names = [str(config.id2label.get(i, f"label_{i}")) for i in range(labels)] if labels > 1 else ["reward"]
    limit = min(getattr(config, "max_position_embeddings", None) or 512, tokenizer.model_max_length or 512, 4096)
    return {"kind": "reward", "reward": {"ensemble": 1, "aspects": names, "max_length": limit, "normalization": None, "foreign": True}}
