"""A small KV-cached decoder for Llama-family causal LMs, for sampling rollouts without per-token framework overhead.

Why: a Hugging Face forward of one new token pays a fixed cost in Python and small ops (decorators, mask building,
cache bookkeeping, separate q/k/v and gate/up products) that dominates whenever the arithmetic per token is small:
small models, and GPUs at RL batch sizes. This decoder runs the same arithmetic as the HF modules (RMSNorm in fp32,
rotary embeddings from the model's own rotary module, SDPA attention, SiLU-gated MLP) on the model's current
weights, with a preallocated key/value cache, q/k/v and gate/up projections fused into one matrix each, and, for
one new token, the residual adds fused into the matrix products. Measured with ``benchmarks/sampling.py``: on an
H200 with a 0.44B Llama, 64 rows x 128 new tokens, fp32 weights under bf16 autocast (how the trainers sample),
6.1k new tokens/s against 2.9k for HF generate with its static cache and 3.1k with the dynamic one; on the online
RL benchmark's tiny Llama on one shared CPU core, 0.150 s per rollout of 32 x 32 tokens against 0.198 s.

Supported: ``llama``, ``mistral``, ``qwen2`` and ``qwen3`` models with plain ``nn.Linear`` projections (no LoRA
wrapper), SiLU, no sliding window and a static rotary scheme (default, linear, llama3). ``unsupported_reason``
says why another model is not; the sampler then runs the HF forward instead. ``verify`` compares the decoder's
logits with the HF forward on real prompts before a model is trusted with it (it caught a wrong attention mask
layout on the H200 that the CPU tests did not show).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

SUPPORTED_TYPES = ("llama", "mistral", "qwen2", "qwen3")
STATIC_ROPE = ("default", "linear", "llama3")


def unsupported_reason(model: Any) -> str | None:
    """None when ``KVDecoder`` can run ``model``, else why not (one line)."""
    if hasattr(model, "peft_config"):
        return "a PEFT (LoRA) wrapper"
    config = getattr(model, "config", None)
    model_type = getattr(config, "model_type", None)
    if model_type not in SUPPORTED_TYPES:
        return f"model type {model_type!r} (supported: {', '.join(SUPPORTED_TYPES)})"
    inner = getattr(model, "model", None)
    if inner is None or not hasattr(inner, "layers") or not hasattr(model, "lm_head"):
        return f"{type(model).__name__} is not a *ForCausalLM with .model.layers and .lm_head"
    if getattr(config, "hidden_act", None) != "silu":
        return f"activation {config.hidden_act!r}"
    rope = (getattr(config, "rope_parameters", None) or getattr(config, "rope_scaling", None) or {}).get("rope_type", "default")
    if rope not in STATIC_ROPE:
        return f"rotary scheme {rope!r}"
    for layer in inner.layers:
        attn, mlp = layer.self_attn, layer.mlp
        linears = [attn.q_proj, attn.k_proj, attn.v_proj, attn.o_proj, mlp.gate_proj, mlp.up_proj, mlp.down_proj]
        if any(type(m) is not torch.nn.Linear for m in linears):
            return "projections are not plain nn.Linear (LoRA or quantized layers)"
        if getattr(attn, "sliding_window", None) is not None:
            return "sliding-window attention"
        if any(m.bias is not None for m in (attn.o_proj, mlp.gate_proj, mlp.up_proj, mlp.down_proj)):
            return "biases outside q/k/v"
    return None


def _rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """As HF's LlamaRMSNorm: normalize in fp32, scale in the input dtype (one fused op when all is fp32)."""
    if x.dtype == weight.dtype == torch.float32 and hasattr(F, "rms_norm"):
        return F.rms_norm(x, (x.shape[-1],), weight, eps)
    dtype = x.dtype
    x = x.float()
    x = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps)
    return weight * x.to(dtype)


def _rotate(x: torch.Tensor, cos: torch.Tensor, signed_sin: torch.Tensor) -> torch.Tensor:
    """Rotary embedding in HF's rotate-half form, ``x cos + cat(-x2, x1) sin``, written as
    ``x cos + roll(x, D/2) [-sin1, sin2]`` (fewer ops). shape: x (B, T, heads, D); cos, signed_sin (B, T, 1, D)."""
    return torch.addcmul(x * cos, x.roll(x.shape[-1] // 2, dims=-1), signed_sin)


class KVDecoder:
    """Prefill and one-token steps of a Llama-family model over ``batch_size`` rows with a preallocated cache.

    Shapes: N prompts prefilled, each repeated ``repeats`` times into B = N x repeats cache rows; the cache holds
    ``max_len`` positions (prompt width P plus the new tokens). Keys of left padding are masked out of attention.
    """

    @torch.no_grad()
    def __init__(self, model: Any, max_len: int):
        config, inner = model.config, model.model
        self.model = model
        self.max_len = max_len
        self.heads = config.num_attention_heads
        self.kv_heads = getattr(config, "num_key_value_heads", None) or self.heads
        first = inner.layers[0].self_attn
        self.head_dim = first.head_dim
        self.scaling = getattr(first, "scaling", self.head_dim**-0.5)
        self.layers = []
        for layer in inner.layers:
            attn, mlp = layer.self_attn, layer.mlp
            qkv_bias = None
            if attn.q_proj.bias is not None:
                qkv_bias = torch.cat([attn.q_proj.bias, attn.k_proj.bias, attn.v_proj.bias])
            self.layers.append(
                dict(
                    in_norm=(layer.input_layernorm.weight, layer.input_layernorm.variance_epsilon),
                    # weights stored transposed, (in, out), for x @ W without a transpose per call
                    qkv=torch.cat([attn.q_proj.weight, attn.k_proj.weight, attn.v_proj.weight]).t().contiguous(),
                    qkv_bias=qkv_bias,
                    q_norm=(attn.q_norm.weight, attn.q_norm.variance_epsilon) if hasattr(attn, "q_norm") else None,
                    k_norm=(attn.k_norm.weight, attn.k_norm.variance_epsilon) if hasattr(attn, "k_norm") else None,
                    o=attn.o_proj.weight.t().contiguous(),
                    post_norm=(layer.post_attention_layernorm.weight, layer.post_attention_layernorm.variance_epsilon),
                    gate_up=torch.cat([mlp.gate_proj.weight, mlp.up_proj.weight]).t().contiguous(),
                    down=mlp.down_proj.weight.t().contiguous(),
                )
            )
        self.embed = inner.embed_tokens.weight
        self.norm = (inner.norm.weight, inner.norm.variance_epsilon)
        self.lm_head = model.lm_head.weight
        self.lm_head_bias = model.lm_head.bias
        positions = torch.arange(max_len, device=self.embed.device).unsqueeze(0)
        cos, sin = inner.rotary_emb(self.embed[:1].unsqueeze(0), positions)  # (1, max_len, D) each
        half = self.head_dim // 2
        self.cos, self.signed_sin = cos[0], torch.cat([-sin[0, :, :half], sin[0, :, half:]], dim=-1)
        self.k_cache: list[torch.Tensor] = []
        self.v_cache: list[torch.Tensor] = []
        self.key_mask = torch.zeros(0)
        self.length = 0  # positions filled
        self.positions = torch.zeros(0)

    def _layer(self, h: torch.Tensor, weights: dict, index: int, rope: tuple[torch.Tensor, torch.Tensor], mask: torch.Tensor, write: slice) -> torch.Tensor:
        """One decoder layer over new positions ``write`` of the cache. shape: h (B, T, H); rope: cos, sin (B, T, 1, D);
        mask (B, 1, T, S) additive (0 or -inf)."""
        b, t, _ = h.shape
        heads, kv_heads = self.heads, self.kv_heads
        x = _rms_norm(h, *weights["in_norm"])
        qkv = torch.matmul(x, weights["qkv"])
        if weights["qkv_bias"] is not None:
            qkv = qkv + weights["qkv_bias"]
        qkv = qkv.view(b, t, heads + 2 * kv_heads, self.head_dim)
        if weights["q_norm"] is not None:  # qwen3: RMSNorm of each query and key head before the rotation
            qk = torch.cat([_rms_norm(qkv[:, :, :heads], *weights["q_norm"]), _rms_norm(qkv[:, :, heads : heads + kv_heads], *weights["k_norm"])], dim=2)
        else:
            qk = qkv[:, :, : heads + kv_heads]
        qk = _rotate(qk, *rope).transpose(1, 2)  # queries and keys rotated together: (B, heads + kv_heads, T, D)
        q = qk[:, :heads]
        self.k_cache[index][:, :, write] = qk[:, heads:]
        self.v_cache[index][:, :, write] = qkv[:, :, heads + kv_heads :].transpose(1, 2)
        keys, values = self.k_cache[index][:, :, : write.stop].to(q.dtype), self.v_cache[index][:, :, : write.stop].to(q.dtype)
        if kv_heads != heads:  # grouped-query attention: each key/value head serves heads / kv_heads queries
            keys = keys.repeat_interleave(heads // kv_heads, dim=1)
            values = values.repeat_interleave(heads // kv_heads, dim=1)
        attn = F.scaled_dot_product_attention(q, keys, values, attn_mask=mask.to(q.dtype), scale=self.scaling)  # (B, heads, T, D)
        h = h + torch.matmul(attn.transpose(1, 2).reshape(b, t, -1), weights["o"])
        x = _rms_norm(h, *weights["post_norm"])
        gate, up = torch.matmul(x, weights["gate_up"]).chunk(2, dim=-1)
        return h + torch.matmul(F.silu(gate) * up, weights["down"])

    def _step_layer(self, h: torch.Tensor, weights: dict, index: int, rope: tuple[torch.Tensor, torch.Tensor], mask: torch.Tensor, column: int) -> torch.Tensor:
        """``_layer`` for one new token per row, on 2-D hidden states with the residual adds fused into the
        matrix products (fewer, larger ops: the per-op cost dominates at this size). shape: h (B, H); rope: cos,
        signed sin (B, 1, D); mask (B, 1, 1, S)."""
        b = h.shape[0]
        heads, kv_heads = self.heads, self.kv_heads
        x = _rms_norm(h, *weights["in_norm"])
        if weights["qkv_bias"] is not None:
            qkv = torch.addmm(weights["qkv_bias"], x, weights["qkv"])
        else:
            qkv = torch.mm(x, weights["qkv"])
        qkv = qkv.view(b, heads + 2 * kv_heads, self.head_dim)
        if weights["q_norm"] is not None:
            qk = torch.cat([_rms_norm(qkv[:, :heads], *weights["q_norm"]), _rms_norm(qkv[:, heads : heads + kv_heads], *weights["k_norm"])], dim=1)
        else:
            qk = qkv[:, : heads + kv_heads]
        qk = _rotate(qk, *rope)  # (B, heads + kv_heads, D)
        self.k_cache[index][:, :, column] = qk[:, heads:]
        self.v_cache[index][:, :, column] = qkv[:, heads + kv_heads :]
        keys, values = self.k_cache[index][:, :, : column + 1], self.v_cache[index][:, :, : column + 1]
        if kv_heads != heads:
            keys = keys.repeat_interleave(heads // kv_heads, dim=1)
            values = values.repeat_interleave(heads // kv_heads, dim=1)
        attn = F.scaled_dot_product_attention(qk[:, :heads].unsqueeze(2), keys, values, attn_mask=mask, scale=self.scaling)  # (B, heads, 1, D)
        h = torch.addmm(h, attn.view(b, heads * self.head_dim), weights["o"])
        x = _rms_norm(h, *weights["post_norm"])
        gate, up = torch.mm(x, weights["gate_up"]).chunk(2, dim=-1)
        return torch.addmm(h, F.silu(gate).mul_(up), weights["down"])

    def _rope(self, pos: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """cos and signed sin (see ``_rotate``) at positions ``pos`` (B, T), shaped (B, T, 1, D) for the heads."""
        return self.cos[pos].unsqueeze(2), self.signed_sin[pos].unsqueeze(2)

    def _logits(self, h: torch.Tensor) -> torch.Tensor:
        """(B, H) last hidden states -> (B, V) fp32 logits."""
        return F.linear(_rms_norm(h, *self.norm), self.lm_head, self.lm_head_bias).float()  # lm_head as stored (tied)

    @torch.no_grad()
    def prefill(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, repeats: int = 1) -> torch.Tensor:
        """Run the N left-padded prompts once, then give each ``repeats`` cache rows (the group shares its prompt's
        keys and values). shape: input_ids, attention_mask (N, P) -> next-token logits (N x repeats, V), row i of
        the output belongs to prompt i // repeats."""
        n, width = input_ids.shape
        if width >= self.max_len:
            raise ValueError(f"prompt width {width} leaves no room in a cache of {self.max_len} positions")
        valid = attention_mask.bool()
        pos = (attention_mask.long().cumsum(dim=1) - 1).clamp(min=0)  # (N, P), as generate assigns positions
        causal = torch.ones(width, width, dtype=torch.bool, device=valid.device).tril()
        # A padding query sees itself, so no row of the mask is empty (its output is never read).
        eye = torch.eye(width, dtype=torch.bool, device=valid.device)
        allowed = (causal & valid[:, None, :]) | eye  # (N, P, P)
        mask = torch.zeros(allowed.shape, device=valid.device).masked_fill(~allowed, float("-inf")).unsqueeze(1)  # (N, 1, P, P)
        h = self.embed[input_ids]  # (N, P, H)
        rows = n * repeats
        cache_shape = (rows, self.kv_heads, self.max_len, self.head_dim)
        dtype, device = h.dtype, h.device
        prompt_k = [torch.empty(n, self.kv_heads, width, self.head_dim, dtype=dtype, device=device) for _ in self.layers]
        prompt_v = [torch.empty_like(k) for k in prompt_k]
        self.k_cache, self.v_cache = prompt_k, prompt_v
        for index, weights in enumerate(self.layers):
            h = self._layer(h, weights, index, self._rope(pos), mask, slice(0, width))
        # Now the B = N x repeats cache: each prompt's keys and values copied into its group's rows.
        self.k_cache = [torch.zeros(cache_shape, dtype=k.dtype, device=device) for k in prompt_k]
        self.v_cache = [torch.zeros(cache_shape, dtype=v.dtype, device=device) for v in prompt_v]
        for index in range(len(self.layers)):
            self.k_cache[index][:, :, :width] = prompt_k[index].repeat_interleave(repeats, dim=0)
            self.v_cache[index][:, :, :width] = prompt_v[index].repeat_interleave(repeats, dim=0)
        self.key_mask = torch.zeros(rows, self.max_len, dtype=dtype, device=device)  # additive: -inf on left padding
        self.key_mask[:, :width].masked_fill_(~valid.repeat_interleave(repeats, dim=0), float("-inf"))
        self.positions = pos[:, -1].repeat_interleave(repeats) + 1  # (B,) position of the next token
        self.length = width
        return self._logits(h[:, -1]).repeat_interleave(repeats, dim=0)

    @torch.no_grad()
    def step(self, tokens: torch.Tensor) -> torch.Tensor:
        """Append one token per row and return the logits for the next. shape: tokens (B,) -> (B, V)."""
        if self.length >= self.max_len:
            raise ValueError(f"the cache of {self.max_len} positions is full")
        column = self.length
        # (B, 1, 1, S), contiguous: a strided view of the mask gave wrong attention on a GPU (bf16, H200)
        mask = self.key_mask[:, : column + 1].contiguous()[:, None, None, :]
        cos, sin = self._rope(self.positions.unsqueeze(1))  # (B, 1, 1, D)
        h = self.embed[tokens]  # (B, H)
        if torch.is_autocast_enabled(h.device.type):  # keep the residual stream in fp32 as HF does: no fused adds
            h = h.unsqueeze(1)
            for index, weights in enumerate(self.layers):
                h = self._layer(h, weights, index, (cos, sin), mask, slice(column, column + 1))
            h = h[:, 0]
        else:
            for index, weights in enumerate(self.layers):
                h = self._step_layer(h, weights, index, (cos[:, 0], sin[:, 0]), mask, column)
        self.length += 1
        self.positions = self.positions + 1
        return self._logits(h)

    @torch.no_grad()
    def select(self, rows: torch.Tensor) -> None:
        """Keep only ``rows`` of the batch (finished completions dropped). shape: rows (B',) long."""
        self.k_cache = [k.index_select(0, rows) for k in self.k_cache]
        self.v_cache = [v.index_select(0, rows) for v in self.v_cache]
        self.key_mask = self.key_mask.index_select(0, rows)
        self.positions = self.positions.index_select(0, rows)

    @torch.no_grad()
    def verify(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, rtol: float = 1e-3) -> float:
        """Largest difference between this decoder's and the HF forward's next-token logits for a prefill and two
        steps on ``input_ids`` (N, P), relative to the largest logit; raises ``AssertionError`` above ``rtol``."""
        worst = 0.0
        ids, mask = input_ids, attention_mask
        logits = self.prefill(ids, mask)
        for steps in range(3):
            pos = (mask.long().cumsum(dim=1) - 1).clamp(min=0)
            expected = self.model(input_ids=ids, attention_mask=mask, position_ids=pos, use_cache=False, logits_to_keep=1).logits[:, -1].float()
            worst = max(worst, float((logits - expected).abs().max() / expected.abs().max().clamp(min=1.0)))
            if steps == 2 or self.length >= self.max_len:
                break
            next_ids = expected.argmax(dim=-1)
            logits = self.step(next_ids)
            ids = torch.cat([ids, next_ids[:, None]], dim=1)
            mask = torch.cat([mask, torch.ones_like(mask[:, :1])], dim=1)
        if worst > rtol:
            raise AssertionError(f"decoder logits differ from the model's by {worst:.2e} (relative) > {rtol:.0e}")
        return worst
