"""Nothing silently wrong in what trainers and scorers read (issue 15): ties, rating aspects, chat templates, pad
tokens, the data a TRL user brings (snapshots, pairs for KTO, Hugging Face reward models, LoRA adapters), the
reward normalization, and the HTML report. Through the CLI where a user meets each, on the tiny models and the
shared data (PandaLM with its ties kept, HH-RLHF)."""

from __future__ import annotations

import json
import random
import shutil
from pathlib import Path

import numpy as np
import pytest

TRAIN = ["--max-steps", "1", "--batch-size", "2", "--set", "mlflow=false", "--set", "progress=false"]


def _write(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def _meta(folder: Path) -> dict:
    return json.loads((folder / "tether.json").read_text())


def _ok(result):
    assert result.code == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "Traceback" not in result.stderr
    return result


def _refused(result, *needles: str):
    assert result.code != 0 and "Traceback" not in result.stderr + result.stdout, result.stderr[-3000:]
    for needle in needles:
        assert needle in result.stderr, result.stderr
    return result


# ---------------------------------------------------------------------------------------------------------------
# A workspace with PandaLM's 999 items and a Dawid-Skene snapshot that keeps its ties
# ---------------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def pandalm(tmp_path_factory, shared_data):
    """(workspace root, snapshot name, its rows): `data import` + `data snapshot --aggregate dawid-skene --keep-ties`."""
    from tether.store.db import session_scope
    from tether.store.importer import import_file
    from tether.store.snapshots import make_snapshot
    from tether.store.workspace import init_workspace

    ws = init_workspace(tmp_path_factory.mktemp("pandalm") / "ws")
    with session_scope(ws.database_url) as session:
        import_file(shared_data / "pandalm" / "testset-v1.json", "pandalm", session=session)
    with session_scope(ws.database_url) as session:
        snap = make_snapshot("pandalm", session=session, root=ws.root, aggregate="dawid-skene", keep_ties=True, snapshot_name="pandalm-ties")
    path = Path(snap["path"]) if Path(snap["path"]).is_absolute() else ws.root / snap["path"]
    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]
    return ws.root, "pandalm-ties", rows, snap["digest"]


@pytest.fixture
def in_pandalm(pandalm, monkeypatch):
    root, name, rows, digest = pandalm
    monkeypatch.delenv("TETHER_DATABASE_URL", raising=False)
    monkeypatch.setenv("TETHER_HOME", str(root))
    return name, rows, digest


# ---------------------------------------------------------------------------------------------------------------
# 1. Ties are never read as a preference
# ---------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("loss", ["dpo", "ipo", "cdpo"])
def test_dpo_ipo_cdpo_skip_and_count_the_ties_of_a_snapshot(cli, in_pandalm, tiny_lm_dir, tmp_path, loss):
    name, rows, digest = in_pandalm
    ties = sum(1 for r in rows if r.get("tie"))
    assert len(rows) == 999 and ties == 105  # the issue's figures
    extra = ["--set", "label_smoothing=0.1"] if loss == "cdpo" else []
    out = tmp_path / loss
    result = _ok(cli("train", "dpo", "--model", tiny_lm_dir, "--data", f"snapshot:{name}", "--output-dir", out, "--loss", loss,
                     "--max-length", "128", "--set", "precompute_ref=false", *extra, *TRAIN))
    assert "skipped 105 tie(s) of 999 rows" in result.stdout
    meta = _meta(out)
    assert meta["ties_skipped"] == 105 and meta["data_digest"] == digest  # lineage: the snapshot's own digest
    assert meta["pairs"] <= len(rows) - ties


def test_sft_on_a_preference_snapshot_skips_and_counts_the_ties(cli, in_pandalm, tiny_lm_dir, tmp_path):
    name, rows, _ = in_pandalm
    result = _ok(cli("train", "sft", "--model", tiny_lm_dir, "--data", f"snapshot:{name}", "--output-dir", tmp_path / "sft", "--max-length", "128", *TRAIN))
    assert "skipped 105 tie(s)" in result.stdout and "SFT would learn its chosen answer" in result.stdout
    meta = _meta(tmp_path / "sft")
    assert meta["ties_skipped"] == 105 and meta["examples"] <= len(rows) - 105


def test_kto_splits_preference_pairs_as_trl_does_and_skips_ties(cli, in_pandalm, tiny_lm_dir, tmp_path):
    name, rows, digest = in_pandalm
    result = _ok(cli("train", "kto", "--model", tiny_lm_dir, "--data", f"snapshot:{name}", "--output-dir", tmp_path / "kto",
                     "--max-length", "128", "--set", "precompute_ref=false", *TRAIN))
    assert "KTO on 894 preference pairs: each split into a desirable (chosen) and an undesirable (rejected) example" in result.stdout
    meta = _meta(tmp_path / "kto")
    assert meta["pairs_split"] == 894 and meta["ties_skipped"] == 105 and meta["data_digest"] == digest
    # one desirable and one undesirable example per pair (less those too long for --max-length)
    assert meta["examples"] <= 2 * 894 and 0 < meta["desirable"] < meta["examples"]


# ---------------------------------------------------------------------------------------------------------------
# 2. Rating aspects: weights and signs, never an equal average
# ---------------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def rating_rm(tiny_lm_dir, tmp_path_factory) -> Path:
    """A tiny rating model with a helpfulness aspect and a harm aspect (higher is worse)."""
    from tether.recipes.configs import RewardConfig
    from tether.recipes.reward import train_reward

    rng = random.Random(3)
    rows = []
    for _ in range(48):
        harmful = rng.random() < 0.5
        text = " ".join(rng.choices("hello how can i help you today order has shipped".split(), k=4) + (["sorry"] if harmful else ["thank"]))
        rows.append({"prompt": "hello\n", "completion": text, "ratings": {"helpful": 2 if harmful else 5, "harm": 4 if harmful else 1}})
    root = tmp_path_factory.mktemp("rating")
    out = root / "rm"
    train_reward(RewardConfig(model=str(tiny_lm_dir), data=str(_write(root / "ratings.jsonl", rows)), output_dir=out, objective="rating",
                              epochs=2, batch_size=8, learning_rate=3e-3, progress=False, mlflow=False))
    return out


def test_score_writes_every_aspect_and_combines_them_only_with_weights(cli, rating_rm, tmp_path):
    from tether.models.reward_model import RewardModel

    rows = [{"prompt": "hello\n", "completion": "order has shipped thank"}, {"prompt": "hello\n", "completion": "order has shipped sorry"}]
    data = _write(tmp_path / "rows.jsonl", rows)
    result = _ok(cli("score", "--model", rating_rm, "--data", data, "-o", tmp_path / "aspects.jsonl"))
    assert "rates 2 aspects (harm, helpful)" in result.stderr and f"--model {rating_rm}:harm=1,helpful=-1" in result.stderr
    scored = [json.loads(line) for line in (tmp_path / "aspects.jsonl").read_text().splitlines()]
    assert all(set(r["reward_aspects"]) == {"harm", "helpful"} and "reward" not in r for r in scored)
    _ok(cli("score", "--model", f"{rating_rm}:helpful=1,harm=-2", "--data", data, "-o", tmp_path / "combined.jsonl"))
    combined = [json.loads(line) for line in (tmp_path / "combined.jsonl").read_text().splitlines()]
    aspects = RewardModel.load(rating_rm, device="cpu").score_aspects([r["prompt"] for r in rows], [r["completion"] for r in rows])
    np.testing.assert_allclose([r["reward"] for r in combined], aspects["helpful"] - 2 * aspects["harm"], rtol=1e-5, atol=1e-5)
    assert combined[0]["reward"] > combined[1]["reward"]  # harm counts against
    _refused(cli("score", "--model", f"{rating_rm}:helpful=1", "--data", data, "-o", tmp_path / "x.jsonl"), "no weight for harm")
    _refused(cli("score", "--model", f"{rating_rm}:helpful=1,harm=-1,tone=1", "--data", data, "-o", tmp_path / "x.jsonl"), "unknown aspect(s) tone")


def test_rl_and_eval_refuse_a_rating_model_without_weights_and_use_them_when_given(cli, rating_rm, tiny_lm_dir, tmp_path):
    from tether.models.reward_model import RewardModel
    from tether.recipes.reward_specs import load_reward

    prompts = _write(tmp_path / "prompts.jsonl", [{"prompt": "hello"}] * 4)
    _refused(cli("train", "grpo", "--model", tiny_lm_dir, "--reward", rating_rm, "--prompts", prompts, "--output-dir", tmp_path / "g",
                 "--group-size", "2", "--max-new-tokens", "4", *TRAIN), "rates 2 aspects", "negative where higher is worse")
    assert not (tmp_path / "g" / "metrics.jsonl").exists()  # refused before any rollout
    pairs = _write(tmp_path / "pairs.jsonl", [{"prompt": "hello\n", "chosen": "order thank", "rejected": "order sorry"}] * 2)
    _refused(cli("eval", "reward", "--model", rating_rm, "--data", pairs), "rates 2 aspects")
    report = json.loads(_ok(cli("eval", "reward", "--model", f"{rating_rm}:helpful=1,harm=-1", "--data", pairs, "--json")).stdout)
    assert report["n"] == 2
    # the RL reward is the weighted sum of the aspects, each logged on its own
    reward = load_reward([f"{rating_rm}:helpful=1,harm=-1@0.5"], device="cpu")
    completions = ["order has shipped thank", "order has shipped sorry"]
    scores, metrics = reward.score(["hello\n"] * 2, ["hello\n"] * 2, completions)
    aspects = RewardModel.load(rating_rm, device="cpu").score_aspects(["hello\n"] * 2, completions)
    np.testing.assert_allclose(scores.numpy(), 0.5 * (aspects["helpful"] - aspects["harm"]), rtol=1e-5, atol=1e-5)
    assert {"reward/rm", "reward/rm/helpful", "reward/rm/harm"} <= set(metrics)


def test_lineage_finds_reward_models_named_by_a_weighted_or_aspect_spec(rating_rm, tiny_rm_dir, tiny_lm_dir):
    from tether.recipes.lineage import model_lineage

    lineage = model_lineage({"model": str(tiny_lm_dir), "prompts": "p.jsonl", "reward": [f"{tiny_rm_dir}@0.5", f"{rating_rm}:helpful=1,harm=-1", "rules:r.yaml"]})
    assert [(i["role"], i["path"]) for i in lineage["inputs"]] == [("reward", str(tiny_rm_dir.resolve())), ("reward", str(rating_rm.resolve()))]


def test_a_ppo_critic_started_from_a_rating_model_reads_the_weighted_reward(rating_rm, tiny_lm_dir, tmp_path):
    import torch

    from tether.models.hf import load_tokenizer
    from tether.models.reward_model import RewardModel
    from tether.models.value_model import load_critic
    from tether.recipes.configs import PPOConfig

    cfg = PPOConfig(model=str(tiny_lm_dir), reward=[f"{rating_rm}:helpful=1,harm=-1"], prompts="p.jsonl", output_dir=tmp_path / "o")
    rm = RewardModel.load(f"{rating_rm}:helpful=1,harm=-1", device="cpu")
    critic, note = load_critic(cfg, load_tokenizer(tiny_lm_dir), [rm])
    assert "critic from the reward model" in note
    from tether.models.tokens import encode_many

    (seq,) = encode_many(rm.tokenizer, ["hello\n"], ["order has shipped sorry"], 64)
    ids = torch.tensor([seq])
    with torch.no_grad():
        value = critic(ids, torch.ones_like(ids), torch.arange(len(seq)).unsqueeze(0))[0, -1]
    assert value.item() == pytest.approx(float(rm.score(["hello\n"], ["order has shipped sorry"])[0]), abs=1e-4)


# ---------------------------------------------------------------------------------------------------------------
# 4. Chat templates: the model's own, said in one line, never a made-up one
# ---------------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def base_lm_dir(tmp_path_factory) -> Path:
    """A tiny Llama whose tokenizer has no chat template (a base model)."""
    from tether.demo.tiny import build_causal_lm, build_tokenizer

    out = tmp_path_factory.mktemp("base-lm")
    corpus = ["Hello, how can I help you today?", "Your order has shipped.", "Please reset your password."] * 20
    tokenizer = build_tokenizer(corpus, vocab_size=300)
    tokenizer.chat_template = None
    build_causal_lm(tokenizer, out, hidden_size=32, num_layers=2, num_heads=2)
    return out


def test_string_prompts_go_through_a_chat_models_template_and_the_run_says_which(cli, tiny_lm_dir, tmp_path):
    from tether.models.hf import load_tokenizer
    from tether.recipes.sft import encode_sft_rows

    data = _write(tmp_path / "sft.jsonl", [{"prompt": "where is my order?", "completion": "It has shipped."}] * 4)
    result = _ok(cli("train", "sft", "--model", tiny_lm_dir, "--data", data, "--output-dir", tmp_path / "sft", *TRAIN))
    assert result.stdout.count("template: the chat template of") == 1 and "plain-text prompts go in as a user turn" in result.stdout
    assert _meta(tmp_path / "sft")["prompt_format"] == "chat"
    tokenizer = load_tokenizer(tmp_path / "sft")  # the saved model renders its prompts as it was trained
    (prompt, _), = encode_sft_rows(tokenizer, [{"prompt": "where is my order?", "completion": "ok"}], 128)[0]
    assert tokenizer.decode(prompt) == "<|user|>\nwhere is my order?\n<|assistant|>\n"
    # turned off: as they are, recorded so that later runs on the output do the same
    off = _ok(cli("train", "sft", "--model", tiny_lm_dir, "--data", data, "--output-dir", tmp_path / "off", "--set", "chat_template=false", *TRAIN))
    assert "plain-text prompts as they are" in off.stdout and _meta(tmp_path / "off")["prompt_format"] == "chat_messages_only"
    (prompt, _), = encode_sft_rows(load_tokenizer(tmp_path / "off"), [{"prompt": "where is my order?", "completion": "ok"}], 128)[0]
    assert load_tokenizer(tmp_path / "off").decode(prompt) == "where is my order?"


def test_a_tokenizer_without_a_template_gets_plain_text_and_no_made_up_template_is_saved(cli, base_lm_dir, tmp_path):
    from transformers import AutoTokenizer

    rows = [{"messages": [{"role": "user", "content": "where is my order?"}, {"role": "assistant", "content": "It has shipped."}]}] * 4
    result = _ok(cli("train", "sft", "--model", base_lm_dir, "--data", _write(tmp_path / "chat.jsonl", rows), "--output-dir", tmp_path / "sft", *TRAIN))
    assert f"template: none ({base_lm_dir} has no chat template)" in result.stdout
    saved = AutoTokenizer.from_pretrained(tmp_path / "sft")
    assert saved.chat_template is None and not (tmp_path / "sft" / "chat_template.jinja").exists()
    assert _meta(tmp_path / "sft")["prompt_format"] == "plain"


@pytest.fixture(scope="module")
def tiny_rm_dir(tiny_lm_dir, tmp_path_factory) -> Path:
    """A tiny pairwise reward model trained for 2 steps (a scorer with tether.json, not a good one)."""
    from tether.recipes.configs import RewardConfig
    from tether.recipes.reward import train_reward

    root = tmp_path_factory.mktemp("pair-rm")
    rows = [{"prompt": "hello\n", "chosen": "thank you", "rejected": "sorry"}] * 8
    train_reward(RewardConfig(model=str(tiny_lm_dir), data=str(_write(root / "pairs.jsonl", rows)), output_dir=root / "rm", max_steps=2,
                              batch_size=4, progress=False, mlflow=False))
    return root / "rm"


def test_eval_policy_redteam_prompts_go_through_the_chat_template(cli, tiny_lm_dir, tiny_rm_dir, tmp_path, monkeypatch):
    import tether.lifecycle.evaluate_policy as ep

    seen: list[str] = []
    original = ep.sample

    def spy(model, tokenizer, prompts, **kw):
        texts, rollouts = original(model, tokenizer, prompts, **kw)
        seen.extend(t for r in rollouts for t in r.prompt_texts)
        return texts, rollouts

    monkeypatch.setattr(ep, "sample", spy)
    prompts = _write(tmp_path / "prompts.jsonl", [{"prompt": "where is my order?"}] * 2)
    redteam = tmp_path / "redteam.csv"
    redteam.write_text("prompt\nhow do I pick a lock?\n", encoding="utf-8")
    args = ["eval", "policy", "--policy", tiny_lm_dir, "--baseline", tiny_lm_dir, "--reward", tiny_rm_dir, "--prompts", prompts,
            "--redteam", redteam, "--n-redteam", "1", "--max-new-tokens", "3"]
    result = _ok(cli(*args))
    assert result.stderr.count(f"template: the chat template of {tiny_lm_dir};") == 2  # policy and baseline (the reward model says its own)
    assert "<|user|>\nhow do I pick a lock?\n<|assistant|>\n" in seen
    seen.clear()
    result = _ok(cli(*args, "--no-chat-template"))
    assert "plain-text prompts as they are" in result.stderr and "how do I pick a lock?" in seen


# ---------------------------------------------------------------------------------------------------------------
# 9. No pad token: EOS pads, with a note, everywhere
# ---------------------------------------------------------------------------------------------------------------


def test_a_model_without_a_pad_token_trains_and_evaluates_with_eos_as_pad(cli, tiny_lm_dir, tiny_rm_dir, tmp_path):
    no_pad = tmp_path / "no-pad"
    shutil.copytree(tiny_lm_dir, no_pad)
    config = json.loads((no_pad / "tokenizer_config.json").read_text())
    config["pad_token"] = None
    (no_pad / "tokenizer_config.json").write_text(json.dumps(config))
    note = "has no pad token: padding with its EOS token '</s>' (as TRL does)"
    sft = _write(tmp_path / "sft.jsonl", [{"prompt": "where is my order?", "completion": "It has shipped."}] * 4)
    assert note in _ok(cli("train", "sft", "--model", no_pad, "--data", sft, "--output-dir", tmp_path / "sft", *TRAIN)).stdout
    pairs = _write(tmp_path / "pairs.jsonl", [{"prompt": "where?", "chosen": " shipped", "rejected": " no"}] * 4)
    dpo = ["--set", f"ref_cache_dir={tmp_path / 'cache'}"]
    assert note in _ok(cli("train", "dpo", "--model", no_pad, "--data", pairs, "--output-dir", tmp_path / "dpo", *dpo, *TRAIN)).stdout
    prompts = _write(tmp_path / "prompts.jsonl", [{"prompt": "where is my order?"}] * 2)
    result = _ok(cli("eval", "policy", "--policy", no_pad, "--baseline", tiny_lm_dir, "--reward", tiny_rm_dir, "--prompts", prompts, "--max-new-tokens", "3"))
    assert note in result.stderr


# ---------------------------------------------------------------------------------------------------------------
# 10. What a TRL user brings: snapshots for `score`, Hugging Face reward models, LoRA adapters
# ---------------------------------------------------------------------------------------------------------------


def test_score_reads_a_snapshot_like_eval_reward(cli, in_pandalm, tiny_rm_dir, tmp_path):
    name, rows, _ = in_pandalm
    _ok(cli("score", "--model", tiny_rm_dir, "--data", f"snapshot:{name}", "-o", tmp_path / "scored.jsonl", "--batch-size", "64"))
    scored = [json.loads(line) for line in (tmp_path / "scored.jsonl").read_text().splitlines()]
    assert len(scored) == len(rows) and all("reward_chosen" in r and "reward_rejected" in r for r in scored)
    _refused(cli("score", "--model", tiny_rm_dir, "--data", "snapshot:nope", "-o", tmp_path / "x.jsonl"), "no snapshot named 'nope'")


def test_a_hugging_face_reward_model_without_tether_json_is_accepted_on_its_raw_scale(cli, tiny_lm_dir, tmp_path):
    import torch
    from transformers import AutoConfig, AutoModelForSequenceClassification, AutoTokenizer

    from tether.recipes.reward_specs import load_reward

    hf_rm = tmp_path / "hf-rm"
    torch.manual_seed(0)
    AutoModelForSequenceClassification.from_config(AutoConfig.from_pretrained(tiny_lm_dir, num_labels=1)).save_pretrained(hf_rm)
    AutoTokenizer.from_pretrained(tiny_lm_dir).save_pretrained(hf_rm)
    assert not (hf_rm / "tether.json").exists()
    data = _write(tmp_path / "rows.jsonl", [{"prompt": "hello", "completion": "thank you"}, {"prompt": "hello", "completion": "sorry"}])
    result = _ok(cli("score", "--model", hf_rm, "--data", data, "-o", tmp_path / "scored.jsonl"))
    assert "has no tether.json: used as a Hugging Face reward model; its scores are its raw outputs, unnormalized" in result.stderr
    scored = [json.loads(line) for line in (tmp_path / "scored.jsonl").read_text().splitlines()]
    assert all(np.isfinite(r["reward"]) for r in scored)
    notes: list[str] = []
    reward = load_reward([str(hf_rm)], device="cpu", say=notes.append)  # as --reward of train ppo/grpo/rloo
    assert sum("unnormalized" in n for n in notes) == 1 and any(n.startswith("template: the chat template of") for n in notes)
    scores, _ = reward.score(["hello"] * 2, ["hello"] * 2, ["thank you", "sorry"])
    np.testing.assert_allclose(scores.numpy(), [r["reward"] for r in scored], rtol=1e-5, atol=1e-5)
    _refused(cli("score", "--model", tiny_lm_dir, "--data", data, "-o", tmp_path / "x.jsonl"), "not a Tether reward model")


def test_a_lora_adapter_given_as_model_says_what_it_is_and_what_to_do(cli, tiny_lm_dir, tmp_path):
    sft = _write(tmp_path / "sft.jsonl", [{"prompt": "where is my order?", "completion": "It has shipped."}] * 4)
    _ok(cli("train", "sft", "--model", tiny_lm_dir, "--data", sft, "--output-dir", tmp_path / "adapter", "--lora-r", "4", *TRAIN))
    assert (tmp_path / "adapter" / "adapter_config.json").exists() and not (tmp_path / "adapter" / "config.json").exists()
    pairs = _write(tmp_path / "pairs.jsonl", [{"prompt": "where?", "chosen": " shipped", "rejected": " no"}] * 4)
    for command, data in (("dpo", pairs), ("sft", sft), ("reward", pairs)):
        result = _refused(cli("train", command, "--model", tmp_path / "adapter", "--data", data, "--output-dir", tmp_path / command, *TRAIN),
                          "is a LoRA adapter (adapter_config.json) on", "not a full model", "--merge")
        assert "no trainable parameters" not in result.stderr


# ---------------------------------------------------------------------------------------------------------------
# 11. Reward normalization: a capped sample, said as it runs
# ---------------------------------------------------------------------------------------------------------------


def test_reward_normalization_scores_a_capped_sample_and_says_so(cli, tiny_lm_dir, shared_data, tmp_path):
    hh = shared_data / "hh-rlhf" / "helpful-base" / "test.jsonl.gz"
    out = tmp_path / "rm"
    result = _ok(cli("train", "reward", "--model", tiny_lm_dir, "--data", hh, "--output-dir", out, "--max-steps", "2", "--batch-size", "4",
                     "--max-length", "256", "--set", "mlflow=false", "--set", "progress=false", "--set", "validation_fraction=0"))
    norm = _meta(out)["reward"]["normalization"]
    # a sample, not every training chosen completion
    assert norm["n"] == 256 and norm["of"] == _meta(out)["reward"]["rows"]["train"] > 1200
    assert f"normalizing rewards: scoring 256 of {norm['of']} training chosen completions with the trained model" in result.stdout
    assert "normalization: raw mean" in result.stdout


def test_reward_normalization_reuses_the_kept_checkpoints_validation_scores(cli, tiny_lm_dir, shared_data, tmp_path):
    # With a validation split, the normalization's reference is its chosen completions as the kept checkpoint scored
    # them: no pass after training, and the saved model's rewards on them have mean 0 and std 1.
    from tether.data.rows import load_rows
    from tether.models.reward_model import RewardModel
    from tether.models.tokens import encode_many
    from tether.recipes.reward_selection import validation_split

    hh = shared_data / "hh-rlhf" / "helpful-base" / "test.jsonl.gz"
    out = tmp_path / "rm"
    result = _ok(cli("train", "reward", "--model", tiny_lm_dir, "--data", hh, "--output-dir", out, "--max-steps", "3", "--batch-size", "4",
                     "--max-length", "256", "--set", "mlflow=false", "--set", "progress=false", "--set", "validation_steps=1",
                     "--set", "early_stopping_patience=0", "--set", "normalize_max_rows=100"))
    meta = _meta(out)["reward"]
    norm, kept = meta["normalization"], meta["selection"]["best_step"]
    # the tiny tokenizer's long completions: some validation pairs are skipped (over 256 tokens), the rest scored
    assert norm["reference"] == "validation chosen completions" and norm["n"] == meta["rows"]["validation"] >= 100
    assert meta["rows"]["validation_skipped_too_long"] > 0
    assert f"validation accuracy {meta['selection']['best_accuracy']:.4f} on {norm['n']} pairs" in result.stdout
    assert "normalizing rewards: scoring" not in result.stdout  # no pass of its own
    assert f"as the kept checkpoint (step {kept}) scored them in its validation pass" in result.stdout
    _, held = validation_split(load_rows(hh, "preference"), 0.1, 0)
    held = [r for r in held if not r.get("tie")]
    model = RewardModel.load(out)
    fits = {key: encode_many(model.tokenizer, [r["prompt"] for r in held], [r[key] for r in held], 256) for key in ("chosen", "rejected")}
    held = [r for r, c, x in zip(held, fits["chosen"], fits["rejected"]) if c is not None and x is not None]  # as training kept
    scores = model.score([r["prompt"] for r in held], [r["chosen"] for r in held])
    assert len(scores) == norm["n"]
    assert abs(float(scores.mean())) < 1e-3 and abs(float(scores.std(ddof=1)) - 1) < 1e-3


# ---------------------------------------------------------------------------------------------------------------
# 13. The HTML report
# ---------------------------------------------------------------------------------------------------------------


def test_report_shows_conversational_prompts_as_turns(cli, tiny_lm_dir, tiny_rm_dir, tmp_path):
    conversation = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Where is my order?"}]
    prompts = _write(tmp_path / "prompts.jsonl", [{"prompt": conversation}] * 2)
    _ok(cli("eval", "policy", "--policy", tiny_lm_dir, "--baseline", tiny_lm_dir, "--reward", tiny_rm_dir, "--prompts", prompts,
            "--max-new-tokens", "3", "--html", tmp_path / "report.html"))
    page = (tmp_path / "report.html").read_text(encoding="utf-8")
    assert "<span class='role'>user</span> Where is my order?" in page and "<span class='role'>system</span> Be brief." in page
    assert "&quot;role&quot;" not in page and '"role"' not in page


def test_a_one_point_training_curve_is_drawn_as_a_point_with_its_value(monkeypatch):
    import tether.lifecycle.reports.policy as report

    figures = []
    monkeypatch.setattr(report, "figure_html", lambda fig, alt: figures.append(fig) or "<img>")
    assert report.plot_training([{"step": 4, "objective/scores": 0.25, "objective/kl": 1.5}]) == "<img>"
    for ax in figures[0].axes:
        (line,) = ax.get_lines()
        assert line.get_marker() == "o" and list(line.get_xdata()) == [4]
        assert any("at step 4" in t.get_text() for t in ax.texts)


def _result(**overrides) -> dict:
    base = {
        "win_rate": 0.62, "win_rate_ci": [0.45, 0.78], "n_prompts": 12, "violation_rate_policy": 0.0, "violation_rate_baseline": 0.0,
        "length_policy": 10.0, "length_baseline": 10.0, "words_policy": 5.0, "words_baseline": 5.0, "reward_policy_mean": 0.1,
        "reward_baseline_mean": 0.0, "kl": 1.2, "kl_se": 0.1, "kl_negative": False, "kl_gate": 1.2, "samples": [],
    }
    return {**base, **overrides}


def test_a_win_rate_whose_interval_spans_half_is_not_coloured_as_a_win():
    from tether.lifecycle.reports.policy import policy_report

    spans = policy_report(_result())
    assert '<div class="card "><div class="label">win-rate (reward model)</div>' in spans and "spans 50%, no clear win or loss" in spans
    clear = policy_report(_result(win_rate=0.8, win_rate_ci=[0.6, 0.95]))
    assert '<div class="card good"><div class="label">win-rate (reward model)</div>' in clear


def test_a_negative_kl_estimate_is_flagged_and_never_passes_max_kl_as_it_is():
    from tether.lifecycle.evaluate_policy import kl_reading
    from tether.lifecycle.reports.policy import policy_report

    noise = kl_reading(-0.02, 0.05)  # within its noise of 0: its 95% upper bound 0.078 stands for it
    assert noise["kl_negative"] and noise["kl_gate"] == pytest.approx(-0.02 + 1.96 * 0.05)
    off = kl_reading(-2.0, 0.1)  # far below 0: not a KL at all
    assert off["kl_negative"] and off["kl_gate"] is None and "not a KL" in off["kl_note"]
    assert kl_reading(0.4, 0.1) == {"kl_negative": False, "kl_gate": 0.4}
    page = policy_report(_result(kl=-2.0, kl_se=0.1, **off))
    assert "invalid" in page and "-2 ±" not in page.split("KL to")[1].split("</div>")[1]  # the card's value is not -2
    assert '<div class="card bad"><div class="label">KL to baseline</div>' in page
    assert "≈ 0 (≤ 0.078)" in policy_report(_result(kl=-0.02, kl_se=0.05, **noise))
    from tether.lifecycle.evaluate_policy import summary_lines

    (line,) = [x for x in summary_lines(_result(kl=-2.0, kl_se=0.1, win_rate_detail={}, **off)) if x.startswith("KL")]
    assert "-2.000 nats" not in line and "not a KL" in line


def test_recording_a_negative_kl_removes_an_earlier_kl_so_the_gate_fails(workspace, tiny_lm_dir):
    from tether.lifecycle.registry import check_gates, gates_for, record_eval, register_model, show

    version = register_model(workspace, tiny_lm_dir, name="kl-policy", kind="policy")["version"]
    record_eval(workspace, version, {"win_rate": 0.8, "violation_rate": 0.0, "kl": 2.0})
    figures = record_eval(workspace, version, {"win_rate": 0.8, "violation_rate": 0.0, "kl": None})
    assert "kl" not in figures
    gates = {g.key: g for g in check_gates(gates_for(workspace, "policy"), figures)}
    assert not gates["max_kl"].passed and "no evaluation figure 'kl'" in gates["max_kl"].reason()
    assert show(workspace, version)["figures"].get("kl") is None
