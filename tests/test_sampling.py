"""Rollouts (tether.models.sampling): batched sampling, left padding, EOS handling, log-probs that ignore padding."""

from __future__ import annotations

import warnings

import pytest
import torch

from tether.models.logprobs import completion_logps
from tether.models.sampling import build_rollout, generate_hf, generate_loop, sample_rollout, sample_tokens
from tether.models.tokens import encode_prompts
from tether.recipes.online import prompt_indices


@pytest.fixture(scope="module")
def lm(tiny_lm_dir):
    from tether.models.hf import load_causal_lm, load_tokenizer

    # plain-text prompts as they are: these tests count the prompt's own tokens
    return load_causal_lm(tiny_lm_dir).eval(), load_tokenizer(tiny_lm_dir, chat_template=False)


def test_generate_shapes_groups_and_left_padding(lm):
    model, tokenizer = lm
    torch.manual_seed(0)
    prompts = ["Hello, how", "The quick brown fox jumps over the lazy"]
    rollout = generate_hf(model, tokenizer, prompts, group_size=3, max_new_tokens=6, cache="dynamic")
    assert len(rollout) == 6
    assert rollout.prompts == [prompts[0]] * 3 + [prompts[1]] * 3
    width = rollout.prompt_ids.shape[1]
    short = len(encode_prompts(tokenizer, prompts[:1], 100)[1][0])
    # Row 0 is the short prompt: left padding, real tokens at the end.
    assert rollout.prompt_mask[0].tolist() == [0] * (width - short) + [1] * short
    assert (rollout.prompt_ids[0, : width - short] == tokenizer.pad_token_id).all()
    assert rollout.completion_ids.shape[1] <= 6
    assert rollout.input_ids.shape == (6, width + rollout.completion_ids.shape[1])
    assert len(rollout.completion_texts) == 6 and all(isinstance(t, str) for t in rollout.completion_texts)


def test_static_and_dynamic_cache_sample_the_same_tokens(lm):
    model, tokenizer = lm
    out = {}
    for cache in ("static", "dynamic"):
        torch.manual_seed(3)
        out[cache] = generate_hf(model, tokenizer, ["Please reset", "Thank you"], group_size=2, max_new_tokens=5, cache=cache)
    assert torch.equal(out["static"].completion_ids, out["dynamic"].completion_ids)


def test_static_cache_failure_falls_back_to_dynamic(lm, monkeypatch):
    import tether.models.sampling as rollout_module

    model, tokenizer = lm
    original = model.generate
    calls = []

    def generate(*args, generation_config, **kwargs):
        calls.append(generation_config.cache_implementation)
        if generation_config.cache_implementation == "static":
            raise RuntimeError("no static cache here")
        return original(*args, generation_config=generation_config, **kwargs)

    monkeypatch.setattr(model, "generate", generate)
    monkeypatch.setattr(rollout_module, "_STATIC_FAILED", set())
    with pytest.warns(UserWarning, match="static KV cache failed"):
        generate_hf(model, tokenizer, ["Hello"], max_new_tokens=3, cache="static")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # said once: the next call goes straight to the dynamic cache
        generate_hf(model, tokenizer, ["Hello"], max_new_tokens=3, cache="static")
    assert calls == ["static", None, None]


def test_completions_stop_at_the_first_eos(lm):
    _, tokenizer = lm
    eos, pad = tokenizer.eos_token_id, tokenizer.pad_token_id
    rollout = build_rollout(
        tokenizer, ["a", "b"], ["a", "b"], [[10, 11], [12]],
        [[20, 21, eos, 22, 23], [24, 25, 26, 27]],  # row 0 ends at EOS; row 1 hit the length limit
        sampler_logps=[[-1.0, -2.0, -3.0, -4.0, -5.0], [-1.0, -1.0, -1.0, -1.0]],
    )
    assert rollout.completion_ids.tolist() == [[20, 21, eos, pad], [24, 25, 26, 27]]
    assert rollout.completion_mask.tolist() == [[1, 1, 1, 0], [1, 1, 1, 1]]
    assert rollout.has_eos.tolist() == [True, False]
    assert rollout.completion_lengths.tolist() == [3, 4]
    assert rollout.prompt_ids.tolist() == [[10, 11], [pad, 12]]
    assert rollout.sampler_logps.tolist() == [[-1.0, -2.0, -3.0, 0.0], [-1.0, -1.0, -1.0, -1.0]]
    assert rollout.completion_texts[0] == tokenizer.decode([20, 21])  # EOS is not part of the text


def test_a_sampled_nul_token_never_reaches_the_store(lm, db_url):
    """A byte-level model can sample the NUL byte; the store refuses NUL (PostgreSQL cannot hold it), so the
    demo's queue stopped with "completions[1].text holds a NUL character". Sampled text is cleaned once, where
    tokens become text, and the queued pair stores."""
    from tether.store import campaigns
    from tether.store.db import session_scope

    _, tokenizer = lm
    (nul,) = tokenizer("\x00", add_special_tokens=False)["input_ids"]
    assert "\x00" in tokenizer.decode([nul])  # the tiny tokenizer can spell NUL
    hi = tokenizer("Hi", add_special_tokens=False)["input_ids"]
    rollout = build_rollout(tokenizer, ["a"], ["a"], [[10]], [hi + [nul] + hi])
    assert rollout.completion_texts == ["HiHi"]
    with session_scope(db_url) as session:
        project = campaigns.create_project(session, name="nul", schema={"kind": "pairwise"}, overlap=1, actor="t")
        counts = campaigns.add_items(session, project=project, rows=[
            {"prompt": "a", "completions": [{"text": rollout.completion_texts[0]}, {"text": "other"}]}], actor="t")
    assert counts["items"] == 1


def test_model_text_keeps_clean_text_and_cleans_the_rest():
    from tether.checks.inputs import find_unstorable, model_text

    assert model_text("plain") == "plain" and model_text("caf\u00e9 \U0001F600") == "caf\u00e9 \U0001F600"
    assert model_text("a\x00b\ud800c") == "ab\ufffdc"
    assert find_unstorable(model_text("\x00\udfff"), "t") is None


def test_log_probs_ignore_left_padding_and_use_the_temperature(lm):
    """A padded row's completion log-probs equal those of the same row alone (positions skip the padding), and
    temperature T gives log_softmax(logits / T)."""
    model, tokenizer = lm
    torch.manual_seed(1)
    rollout = generate_hf(model, tokenizer, ["Hi", "Your order has shipped and"], max_new_tokens=4, cache="dynamic")
    width = rollout.completion_ids.shape[1]
    with torch.no_grad():
        batched, _ = completion_logps(model, rollout.input_ids, rollout.attention_mask, width)
        keep = rollout.attention_mask[0].bool()
        alone, _ = completion_logps(model, rollout.input_ids[:1, keep], rollout.attention_mask[:1, keep], int(rollout.completion_mask[0].sum()))
        assert torch.allclose(batched[0, : alone.shape[1]], alone[0], atol=1e-5)
        hot, _ = completion_logps(model, rollout.input_ids, rollout.attention_mask, width, temperature=2.0)
        logits = model(rollout.input_ids, attention_mask=rollout.attention_mask, position_ids=(rollout.attention_mask.cumsum(1) - 1).clamp(min=0)).logits
        expected = torch.log_softmax(logits[:, -width - 1 : -1] / 2.0, -1).gather(2, rollout.completion_ids.unsqueeze(-1)).squeeze(-1)
        assert torch.allclose(hot, expected, atol=1e-5)


def test_long_prompts_keep_their_end(lm):
    _, tokenizer = lm
    _, ids = encode_prompts(tokenizer, ["The quick brown fox jumps over the lazy dog. " * 5], 7)
    full = tokenizer("The quick brown fox jumps over the lazy dog. " * 5, add_special_tokens=False)["input_ids"]
    assert ids[0] == full[-7:]


def test_prompt_stream_is_deterministic_and_covers_every_prompt():
    passes = [prompt_indices(5, r, 2, seed=7) for r in range(5)]  # 10 positions = two passes over 5 prompts
    flat = [i for chunk in passes for i in chunk]
    assert sorted(flat[:5]) == list(range(5)) and sorted(flat[5:]) == list(range(5))
    assert flat[:5] != flat[5:] or flat[:5] != sorted(flat[:5])  # shuffled per pass
    assert prompt_indices(5, 3, 2, seed=7) == passes[3]
    assert prompt_indices(5, 0, 5, seed=8) != prompt_indices(5, 0, 5, seed=7)


# ---------------------------------------------------------------------------------------------------------------
# Tether's sampling loop
# ---------------------------------------------------------------------------------------------------------------


def greedy_generate(model, tokenizer, prompts, group_size, max_new_tokens, eos):
    """HF generate's greedy completions, as a Rollout, for the same prompt rows as generate_loop."""
    from transformers import GenerationConfig

    from tether.data.batching import pad_left

    texts, ids = encode_prompts(tokenizer, prompts, 448)
    rows = [i for i in range(len(ids)) for _ in range(group_size)]
    input_ids, attention_mask = pad_left([ids[i] for i in rows], tokenizer.pad_token_id)
    config = GenerationConfig(do_sample=False, max_new_tokens=max_new_tokens, pad_token_id=tokenizer.pad_token_id, eos_token_id=eos)
    out = model.generate(input_ids=input_ids, attention_mask=attention_mask, generation_config=config)
    return build_rollout(tokenizer, [prompts[i] for i in rows], [texts[i] for i in rows], [ids[i] for i in rows], out[:, input_ids.shape[1] :].tolist())


PROMPTS = ["Hello, how", "The quick brown fox jumps over the lazy", "Your order", "Please reset your password"]


@pytest.mark.parametrize("decoder", ["fast", "hf"])
def test_loop_greedy_equals_generate_greedy(lm, decoder):
    """Left-padded prompts of four lengths, two rows per prompt: the loop's greedy tokens, masks and texts equal
    those of HF generate, with the fast decoder and with the model's own forward."""
    model, tokenizer = lm
    ours = generate_loop(model, tokenizer, PROMPTS, group_size=2, max_new_tokens=12, do_sample=False, decoder=decoder)
    theirs = greedy_generate(model, tokenizer, PROMPTS, 2, 12, tokenizer.eos_token_id)
    assert torch.equal(ours.prompt_ids, theirs.prompt_ids) and torch.equal(ours.prompt_mask, theirs.prompt_mask)
    assert torch.equal(ours.completion_ids, theirs.completion_ids)
    assert torch.equal(ours.completion_mask, theirs.completion_mask)
    assert ours.completion_texts == theirs.completion_texts and ours.prompts == theirs.prompts


def test_loop_stops_rows_at_eos_and_drops_them(lm):
    """With a token the greedy completions reach at different steps taken as EOS, rows stop at different
    lengths (finished rows leave the batch): tokens, masks and has_eos still equal HF generate's."""
    model, tokenizer = lm
    free = greedy_generate(model, tokenizer, PROMPTS, 1, 12, None).completion_ids
    first_steps: dict[int, list[int]] = {}  # token -> the step at which each row first emits it
    for row in free.tolist():
        for token in set(row):
            first_steps.setdefault(token, []).append(row.index(token))
    eos = max(first_steps, key=lambda token: len(set(first_steps[token])))  # ends rows at the most distinct steps
    original = tokenizer.eos_token_id
    tokenizer.eos_token_id = eos
    try:
        ours = generate_loop(model, tokenizer, PROMPTS, group_size=1, max_new_tokens=12, do_sample=False, decoder="fast")
        theirs = greedy_generate(model, tokenizer, PROMPTS, 1, 12, eos)
    finally:
        tokenizer.eos_token_id = original
    assert len(set(ours.completion_lengths.tolist())) > 1  # the case under test: rows of several lengths
    assert ours.has_eos.any()
    assert torch.equal(ours.completion_ids, theirs.completion_ids)
    assert torch.equal(ours.completion_mask, theirs.completion_mask)
    assert torch.equal(ours.has_eos, theirs.has_eos)


def test_sampled_tokens_follow_temperature_and_top_p():
    """logits log([0.5, 0.3, 0.15, 0.05]): 40,000 draws land within 0.01 of those probabilities; top_p = 0.75 keeps
    only the two most likely tokens (0.05 + 0.15 = 0.2 <= 0.25 dropped), renormalized to 0.625 / 0.375;
    temperature 2 gives softmax(logits / 2) = sqrt(p) / sum sqrt(p); do_sample=False is the argmax."""
    probs = torch.tensor([0.5, 0.3, 0.15, 0.05])
    logits = probs.log().expand(40_000, 4)
    torch.manual_seed(0)

    def frequencies(**kwargs):
        return torch.bincount(sample_tokens(logits, **kwargs), minlength=4).float() / len(logits)

    assert torch.allclose(frequencies(), probs, atol=0.01)
    nucleus = frequencies(top_p=0.75)
    assert nucleus[2:].sum() == 0
    assert torch.allclose(nucleus[:2], torch.tensor([0.625, 0.375]), atol=0.01)
    assert torch.allclose(frequencies(temperature=2.0), probs.sqrt() / probs.sqrt().sum(), atol=0.01)
    assert sample_tokens(logits[:3], do_sample=False).tolist() == [0, 0, 0]


def test_sampled_loop_matches_generate_in_distribution(lm):
    """Sampling at temperature 1: the mean log-prob of the first sampled token under the model, over 400 rows,
    is the same for the loop and for generate (both sample the model's distribution; the RNG streams differ)."""
    model, tokenizer = lm
    torch.manual_seed(5)
    ours = generate_loop(model, tokenizer, ["Hello, how"], group_size=400, max_new_tokens=1)
    theirs = generate_hf(model, tokenizer, ["Hello, how"], group_size=400, max_new_tokens=1, cache="dynamic")
    with torch.no_grad():
        ids = ours.prompt_ids[:1]
        logps = model(ids).logits[0, -1].log_softmax(-1)
    mean_ours, mean_theirs = logps[ours.completion_ids[:, 0]].mean(), logps[theirs.completion_ids[:, 0]].mean()
    entropy = -(logps.exp() * logps).sum()
    assert abs(mean_ours - mean_theirs) < 0.25 and abs(mean_ours + entropy) < 0.25, (mean_ours, mean_theirs, entropy)


def test_sample_rollout_picks_the_sampler(lm, monkeypatch):
    import tether.models.sampling as rollout_module

    model, tokenizer = lm
    calls = []
    monkeypatch.setattr(rollout_module, "generate_loop", lambda *a, **k: calls.append(("loop", k.get("decoder"))))
    monkeypatch.setattr(rollout_module, "generate_hf", lambda *a, **k: calls.append(("hf", k.get("cache"))))
    sample_rollout(model, tokenizer, ["a"], max_new_tokens=2)  # auto on a CPU: the loop
    sample_rollout(model, tokenizer, ["a"], sampler="hf", cache="static", max_new_tokens=2)
    sample_rollout(model, tokenizer, ["a"], sampler="loop", decoder="hf", max_new_tokens=2)
    assert calls == [("loop", "auto"), ("hf", "static"), ("loop", "hf")]
    with pytest.raises(ValueError, match="unknown sampler"):
        sample_rollout(model, tokenizer, ["a"], sampler="beam")


def test_loop_falls_back_to_the_model_forward_where_the_decoder_cannot_run(lm, tmp_path):
    """A GPT-2 policy: auto samples with its own forward and says so once; decoder=fast is a clear error."""
    from tether.demo.tiny import build_causal_lm
    from tether.errors import TetherError

    _, tokenizer = lm
    gpt2 = build_causal_lm(tokenizer, tmp_path / "gpt2", arch="gpt2", hidden_size=32, num_layers=1, num_heads=2).eval()
    with pytest.warns(UserWarning, match="fast decoder cannot run GPT2LMHeadModel"):
        rollout = generate_loop(gpt2, tokenizer, PROMPTS[:2], group_size=2, max_new_tokens=5, do_sample=False)
    theirs = greedy_generate(gpt2, tokenizer, PROMPTS[:2], 2, 5, tokenizer.eos_token_id)
    assert torch.equal(rollout.completion_ids, theirs.completion_ids)
    with pytest.raises(TetherError, match="fast decoder cannot run"):
        generate_loop(gpt2, tokenizer, PROMPTS[:1], max_new_tokens=2, decoder="fast")


def test_shared_prompt_forward_gives_the_log_probs_and_gradients_of_whole_rows(tiny_lm_dir):
    """Rows that share a prompt (a group) run the prompt once and the completions on its gathered KV cache; the
    log-probs, the entropy and every parameter's gradient equal those of one forward over each whole row, with
    left-padded prompts of different lengths."""
    import tether.models.logprobs as ro
    from tether.models.hf import load_causal_lm, load_tokenizer

    model, tokenizer = load_causal_lm(tiny_lm_dir), load_tokenizer(tiny_lm_dir)
    model.train()
    for module in model.modules():  # dropout off: the two paths must see the same function
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0
    torch.manual_seed(0)
    rollout = generate_hf(model, tokenizer, ["Hi", "Your order has shipped and", "Please"], group_size=3, max_new_tokens=6, cache="dynamic")
    ids, mask, width = rollout.input_ids, rollout.attention_mask, rollout.completion_ids.shape[1]
    assert mask[:, 0].min() == 0  # left padding is present

    def run(share: bool):
        model.zero_grad()
        logps, entropy = completion_logps(model, ids, mask, width, temperature=0.7, with_entropy=True, share_prompts=share)
        (logps * rollout.completion_mask).sum().backward()
        return logps.detach(), entropy, {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}

    calls = []
    original = ro._shared_prompt_logits
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(ro, "_shared_prompt_logits", lambda *a: calls.append(1) or original(*a))
        shared, shared_entropy, shared_grads = run(True)
    assert calls and original(model, ids, mask, width) is not None  # the shared path really ran
    whole, whole_entropy, whole_grads = run(False)
    m = rollout.completion_mask.bool()
    torch.testing.assert_close(shared[m], whole[m], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(shared_entropy[m], whole_entropy[m], rtol=1e-5, atol=1e-5)
    assert shared_grads.keys() == whole_grads.keys() and len(whole_grads) == len(list(model.parameters()))
    for name, grad in whole_grads.items():
        torch.testing.assert_close(shared_grads[name], grad, rtol=1e-4, atol=1e-6)
    # Nothing to share (every prompt distinct) and gradient checkpointing fall back to the plain forward.
    distinct = [0, 3, 6]
    assert original(model, ids[distinct], mask[distinct], width) is None
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    try:
        assert original(model, ids, mask, width) is None
    finally:
        model.gradient_checkpointing_disable()


@pytest.mark.slow
def test_shared_prompt_forward_under_ddp_averages_the_whole_batch_gradient(tiny_lm_dir):
    """Two model calls before one backward under DistributedDataParallel (2 gloo processes, half the rows each):
    every process ends with the gradient of the whole batch, as with one call per step."""
    import os
    import socket
    import subprocess
    import sys
    from pathlib import Path

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = str(s.getsockname()[1])
    worker = Path(__file__).with_name("ddp_shared_prompt_worker.py")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    procs = [subprocess.Popen([sys.executable, str(worker), str(tiny_lm_dir), str(rank), "2", port], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for rank in range(2)]
    outputs = [p.communicate(timeout=300)[0] for p in procs]
    for proc, out in zip(procs, outputs):
        assert proc.returncode == 0, out[-3000:]
        assert "max gradient difference" in out


def test_update_order_keeps_groups_together_inside_random_minibatches():
    """Each minibatch holds a random set of rows (as before), in rollout order, so a prompt's consecutive rows stay
    together when the minibatch is cut into micro-batches."""
    from tether.recipes.online import update_order

    order = update_order(32, 8, seed=5)
    assert sorted(order.tolist()) == list(range(32))
    parts = order.split(8)
    assert all(part.tolist() == sorted(part.tolist()) for part in parts)
    assert [sorted(p.tolist()) for p in parts] != [list(range(k, k + 8)) for k in range(0, 32, 8)]  # still shuffled across minibatches
    assert torch.equal(update_order(32, 8, seed=5), order) and not torch.equal(update_order(32, 8, seed=6), order)
    assert update_order(32, 32, seed=5).tolist() == list(range(32))  # one minibatch: the rollout's own order
