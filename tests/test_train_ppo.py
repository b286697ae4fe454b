"""PPO with a critic (tether.recipes.ppo) on a tiny policy: ratio exactly 1 at first, learning a rule reward with
bounded KL, resume equal to an uninterrupted run, the critic started from a reward model, the CLI."""

from __future__ import annotations

import json

import pytest
import torch

from tether.recipes.configs import PPOConfig, load_config

PROMPTS = ["Hello, how", "Your order", "Please reset", "The quick", "Thank you", "I am"]


@pytest.fixture(scope="module")
def task(tmp_path_factory):
    """Prompts and a rule reward: +1 when the completion contains an "e" (about 20% of the tiny model's samples)."""
    root = tmp_path_factory.mktemp("ppo-task")
    (root / "prompts.jsonl").write_text("".join(json.dumps({"prompt": p}) + "\n" for p in PROMPTS))
    (root / "rules.yaml").write_text('rules:\n  - name: has_e\n    required: ["e"]\n')
    return root


@pytest.fixture(scope="module")
def reward_model_dir(tiny_lm_dir, tmp_path_factory):
    """A Tether reward-model folder on the policy's tokenizer: the tiny Llama with a scalar head, normalization
    mean 0.5 and std 2."""
    from transformers import AutoModelForSequenceClassification

    from tether.models.hf import load_tokenizer

    out = tmp_path_factory.mktemp("rm")
    torch.manual_seed(0)
    model = AutoModelForSequenceClassification.from_pretrained(tiny_lm_dir, num_labels=1)
    model.config.pad_token_id = load_tokenizer(tiny_lm_dir).pad_token_id
    model.save_pretrained(out)
    load_tokenizer(tiny_lm_dir).save_pretrained(out)
    meta = {"kind": "reward", "reward": {"normalization": {"mean": [0.5], "std": [2.0]}, "max_length": 64}}
    (out / "tether.json").write_text(json.dumps(meta))
    return out


def config(tiny_lm_dir, task, out, sets=(), **overrides):
    values = dict(
        model=str(tiny_lm_dir), output_dir=out, prompts=str(task / "prompts.jsonl"), reward=[f"rules:{task / 'rules.yaml'}"],
        batch_size=16, num_minibatches=2, ppo_epochs=2, max_new_tokens=8, learning_rate=5e-3, lr_schedule="constant",
        logging_steps=1, progress=False, mlflow=False, sample_every=5,
    )
    values.update(overrides)
    return load_config(PPOConfig, None, ["missing_eos_penalty=null", *sets], **values)


def history(out):
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def test_ratio_is_exactly_one_on_the_first_minibatch_of_the_first_epoch(tiny_lm_dir, task, tmp_path):
    from tether.recipes.ppo import train_ppo

    seen = []
    cfg = config(tiny_lm_dir, task, tmp_path / "ratio", micro_batch_size=4, max_steps=4)
    train_ppo(cfg, on_step=lambda step, stats: seen.append((stats["update/pass"], stats["update/minibatch"], stats)))
    assert [(e, m) for e, m, _ in seen] == [(0, 0), (0, 1), (1, 0), (1, 1)]
    first = seen[0][2]
    # approx_kl is the mean of (log ratio)^2 / 2: exactly 0 only when every token's ratio is exactly 1.
    assert first["policy/approx_kl"] == 0.0 and first["policy/clipfrac"] == 0.0
    assert first["policy/ratio"] == pytest.approx(1.0, abs=1e-6)
    assert seen[2][2]["policy/approx_kl"] > 0  # the second pass sees an updated policy
    for key in ("val/clipfrac", "val/vpred", "loss/value", "policy/entropy"):
        assert key in first


def test_mean_reward_rises_with_bounded_kl(tiny_lm_dir, task, tmp_path):
    """20 rollouts of 32 completions, 2 epochs x 2 minibatches each: the rule's mean reward goes from about 0.25
    to above 0.6 (measured: 0.75), the summed KL per completion stays below 15 nats (measured: 3.8)."""
    from tether.recipes.ppo import train_ppo

    out = tmp_path / "learn"
    train_ppo(config(tiny_lm_dir, task, out, max_steps=80))
    steps = history(out)
    assert len(steps) == 20
    first = sum(s["rules/has_e"] for s in steps[:3]) / 3
    last = sum(s["rules/has_e"] for s in steps[-3:]) / 3
    assert first < 0.45 and last > first + 0.25, (first, last)
    assert max(s["objective/kl"] for s in steps) < 15
    for key in ("objective/scores", "objective/kl", "objective/rlhf_reward", "policy/approx_kl", "policy/clipfrac", "policy/entropy", "val/clipfrac", "completions/mean_length"):
        assert key in steps[-1]
    assert (out / "critic" / "config.json").exists()


def test_resume_equals_an_uninterrupted_run(tiny_lm_dir, task, tmp_path):
    """Crash in the third rollout, resume from the checkpoint after the second: the policy, the critic and the
    adaptive KL coefficient end exactly where an uninterrupted run ends."""
    from safetensors.torch import load_file

    from tether.recipes.ppo import train_ppo

    settings = dict(batch_size=8, num_minibatches=1, ppo_epochs=2, max_steps=8, save_steps=4, adaptive_kl=True, kl_target=0.01, kl_horizon=100)
    train_ppo(config(tiny_lm_dir, task, tmp_path / "straight", **settings))

    def crash(step, *_):
        if step == 6:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train_ppo(config(tiny_lm_dir, task, tmp_path / "resumed", **settings), on_step=crash)
    train_ppo(config(tiny_lm_dir, task, tmp_path / "resumed", resume=True, **settings))
    for name in ("model.safetensors", "critic/model.safetensors"):
        straight, resumed = load_file(tmp_path / "straight" / name), load_file(tmp_path / "resumed" / name)
        for key in straight:
            assert torch.equal(straight[key], resumed[key]), (name, key)
    straight_meta = json.loads((tmp_path / "straight" / "tether.json").read_text())
    resumed_meta = json.loads((tmp_path / "resumed" / "tether.json").read_text())
    assert straight_meta["final_kl_coef"] == resumed_meta["final_kl_coef"]
    coefs = [s["objective/kl_coef"] for s in history(tmp_path / "straight")]
    # The first rollout's KL is 0 (policy == reference): error clip(0 / 0.01 - 1) = -0.2, 8 samples, horizon 100.
    assert coefs[0] == 0.05 and coefs[1] == pytest.approx(0.05 * (1 - 0.2 * 8 / 100))


def test_critic_starts_from_a_reward_model_on_the_same_tokenizer(tiny_lm_dir, task, reward_model_dir, tmp_path):
    """The critic's value at the EOS of prompt+completion is the reward model's normalized score there."""
    from tether.models.hf import load_tokenizer
    from tether.models.logprobs import position_ids
    from tether.models.reward_model import RewardModel
    from tether.models.value_model import load_critic

    tokenizer = load_tokenizer(tiny_lm_dir)
    cfg = config(tiny_lm_dir, task, tmp_path / "c", reward=[str(reward_model_dir)])
    critic, note = load_critic(cfg, tokenizer, [reward_model_dir])
    assert "reward model" in note
    ids = tokenizer("Hello, how", add_special_tokens=False)["input_ids"] + tokenizer(" can I help", add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    ids = torch.tensor([ids])
    mask = torch.ones_like(ids)
    with torch.no_grad():
        value = critic(ids, mask, position_ids(mask))[0, -1].item()
    expected = RewardModel.load(reward_model_dir, device="cpu").score(["Hello, how"], [" can I help"])[0]
    assert value == pytest.approx(float(expected), abs=1e-4)


def test_critic_falls_back_to_the_policy_when_the_reward_model_tokenizes_differently(tiny_lm_dir, task, reward_model_dir, tmp_path):
    from tether.demo.tiny import build_tokenizer
    from tether.models.hf import load_tokenizer
    from tether.models.value_model import load_critic

    other = tmp_path / "other-rm"
    other.mkdir()
    for name in ("config.json", "model.safetensors", "tether.json"):
        (other / name).write_bytes((reward_model_dir / name).read_bytes())
    build_tokenizer(["completely different words here"] * 10, vocab_size=270, out_dir=other)
    cfg = config(tiny_lm_dir, task, tmp_path / "c")
    critic, note = load_critic(cfg, load_tokenizer(tiny_lm_dir), [other])
    assert "from the policy" in note and "different tokenizer" in note
    assert critic.out_mean.tolist() == [0.0]


def test_ppo_with_a_reward_model_and_rules(tiny_lm_dir, task, reward_model_dir, tmp_path):
    """A reward model and a weighted rules file together: both components are logged, scores are their sum."""
    from tether.recipes.ppo import train_ppo

    out = tmp_path / "rm"
    train_ppo(config(tiny_lm_dir, task, out, reward=[str(reward_model_dir), f"rules:{task / 'rules.yaml'}@0.5"], max_steps=2, batch_size=8, num_minibatches=1, ppo_epochs=2))
    last = history(out)[-1]
    assert last["objective/scores"] == pytest.approx(last[f"reward/{reward_model_dir.name}"] + last["reward/rules"], abs=1e-5)
    assert "critic from the reward model" in json.loads((out / "tether.json").read_text())["critic"]


def test_cli_runs_ppo_and_refuses_bad_inputs(cli, tiny_lm_dir, task, tmp_path):
    result = cli(
        "train", "ppo", "--model", tiny_lm_dir, "--prompts", task / "prompts.jsonl", "--reward", f"rules:{task / 'rules.yaml'}",
        "--output-dir", tmp_path / "ppo", "--batch-size", "8", "--max-new-tokens", "4", "--max-steps", "4",
        "--set", "progress=false", "--set", "mlflow=false", "--set", "adaptive_kl=true",
    )
    assert result.code == 0, result.stderr
    assert "objective/scores" in result.stdout
    (tmp_path / "bad.yaml").write_text("rules: [{length: {max_tokens: 3}}]")
    result = cli("train", "ppo", "--model", tiny_lm_dir, "--prompts", task / "prompts.jsonl", "--reward", f"rules:{tmp_path / 'bad.yaml'}", "--output-dir", tmp_path / "x")
    assert result.code == 2 and "length takes a mapping" in result.stderr and "Traceback" not in result.stderr
    result = cli("train", "ppo", "--model", tmp_path / "no-model", "--prompts", task / "prompts.jsonl", "--reward", f"rules:{task / 'rules.yaml'}", "--output-dir", tmp_path / "x")
    assert result.code == 2 and "not found" in result.stderr and "Traceback" not in result.stderr
