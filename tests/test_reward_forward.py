"""The encoder reward forward computes the last layer at the first token only: the same rewards and gradients as
the model's own forward, for BERT and RoBERTa, with padding, LoRA and gradient checkpointing; other models and
other uses of the model untouched."""

from __future__ import annotations

import pytest
import torch
from transformers import (
    BertConfig,
    BertForSequenceClassification,
    RobertaConfig,
    RobertaForSequenceClassification,
)

from tether.models.hf import enable_activation_checkpointing
from tether.models.reward_model import RewardForward, first_token_last_layer


def _tiny(kind: str, outputs: int = 2):
    torch.manual_seed(0)
    common = {"vocab_size": 120, "hidden_size": 32, "num_hidden_layers": 3, "num_attention_heads": 4, "intermediate_size": 64,
              "hidden_dropout_prob": 0.0, "attention_probs_dropout_prob": 0.0, "num_labels": outputs, "attn_implementation": "sdpa"}
    if kind == "bert":
        return BertForSequenceClassification(BertConfig(**common))
    return RobertaForSequenceClassification(RobertaConfig(**common, pad_token_id=1, max_position_embeddings=40))


def _batch(pad: int) -> tuple[torch.Tensor, torch.Tensor]:
    lengths = [9, 5, 7, 2]  # right padding, as the reward passes build them
    ids = torch.full((len(lengths), max(lengths)), pad)
    mask = torch.zeros_like(ids)
    for row, n in enumerate(lengths):
        ids[row, :n] = torch.randint(3, 120, (n,), generator=torch.Generator().manual_seed(row))
        mask[row, :n] = 1
    return ids, mask


def _rewards_and_grads(model, use_forward: bool, ids, mask):
    model.zero_grad()
    out = RewardForward(model)(ids, mask) if use_forward else model(input_ids=ids, attention_mask=mask).logits
    (out * torch.tensor([1.0, -0.5])).sum().backward()
    return out.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("kind", ["bert", "roberta"])
@pytest.mark.parametrize("variant", ["plain", "lora", "checkpointing"])
def test_first_token_last_layer_gives_the_models_own_rewards_and_gradients(kind, variant):
    model = _tiny(kind)
    if variant == "lora":
        from peft import LoraConfig, get_peft_model

        model = get_peft_model(model, LoraConfig(r=4, target_modules=["query", "key", "value", "dense"], task_type="SEQ_CLS"))
        for name, param in model.named_parameters():  # the LoRA B matrices start at 0: move them off it
            if "lora_B" in name:
                torch.nn.init.normal_(param, std=0.1)
    if variant == "checkpointing":
        enable_activation_checkpointing(model)
    model.train()
    ids, mask = _batch(pad=0 if kind == "bert" else 1)
    plain, plain_grads = _rewards_and_grads(model, False, ids, mask)
    fast, fast_grads = _rewards_and_grads(model, True, ids, mask)
    torch.testing.assert_close(fast, plain, rtol=1e-5, atol=1e-6)
    assert fast_grads.keys() == plain_grads.keys() and len(fast_grads) > 0
    for name in plain_grads:
        torch.testing.assert_close(fast_grads[name], plain_grads[name], rtol=1e-4, atol=1e-6, msg=name)
    layer = (model.base_model.model if variant == "lora" else model).base_model.encoder.layer[-1]
    assert "forward" not in vars(layer)  # restored: the model's own forward again outside the reward pass


def test_the_last_layer_really_runs_on_the_first_token_only_and_nothing_else_is_touched():
    model = _tiny("bert").eval()
    ids, mask = _batch(pad=0)
    shapes = []
    hook = model.bert.encoder.layer[-1].intermediate.register_forward_hook(lambda m, i, o: shapes.append(tuple(o.shape)))
    with torch.no_grad():
        RewardForward(model)(ids, mask)
        model(input_ids=ids, attention_mask=mask)  # the model's own forward: every token
    hook.remove()
    assert shapes == [(4, 1, 64), (4, 9, 64)]
    no_mask = torch.ones_like(ids)  # no padding: transformers may pass no mask at all
    with torch.no_grad():
        torch.testing.assert_close(RewardForward(model)(ids, no_mask), model(input_ids=ids, attention_mask=no_mask).logits, rtol=1e-5, atol=1e-6)
    decoderish = torch.nn.Linear(2, 2)  # anything that is not a BERT-family classifier: left alone
    assert first_token_last_layer(decoderish).layer is None
