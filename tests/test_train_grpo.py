"""GRPO and RLOO (tether.recipes.grpo) on a tiny policy with a rule reward; resume; the CLI and its errors."""

from __future__ import annotations

import json

import pytest
import torch

from tether.recipes.configs import GRPOConfig, load_config

PROMPTS = ["Hello, how", "Your order", "Please reset", "The quick", "Thank you", "I am"]


@pytest.fixture(scope="module")
def task(tmp_path_factory):
    """Prompts and a rule reward: +1 when the completion contains an "e" (about 20% of the tiny model's samples)."""
    root = tmp_path_factory.mktemp("online-task")
    (root / "prompts.jsonl").write_text("".join(json.dumps({"prompt": p}) + "\n" for p in PROMPTS))
    (root / "rules.yaml").write_text('rules:\n  - name: has_e\n    required: ["e"]\n')
    return root


def config(tiny_lm_dir, task, out, **overrides):
    values = dict(
        model=str(tiny_lm_dir), output_dir=out, prompts=str(task / "prompts.jsonl"), reward=[f"rules:{task / 'rules.yaml'}"],
        group_size=8, batch_size=32, max_new_tokens=8, learning_rate=1e-2, lr_schedule="constant", logging_steps=1,
        progress=False, mlflow=False, sample_every=5,
    )
    values.update(overrides)
    return load_config(GRPOConfig, None, [], **values)


def history(out):
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.parametrize("algo", ["grpo", "rloo"])
def test_mean_reward_rises_with_bounded_kl(tiny_lm_dir, task, tmp_path, algo):
    """From seed 0 the rule's mean reward goes from about 0.2 to above 0.7 within 20 steps (measured: 1.0 for GRPO
    and RLOO); the summed KL per completion (8 tokens) stays below 20 nats."""
    from tether.recipes.grpo import train_grpo

    out = tmp_path / algo
    train_grpo(config(tiny_lm_dir, task, out, algo=algo, max_steps=20))
    steps = history(out)
    assert len(steps) == 20
    first = sum(s["rules/has_e"] for s in steps[:3]) / 3
    last = sum(s["rules/has_e"] for s in steps[-3:]) / 3
    assert first < 0.4 and last > first + 0.35, (first, last)
    assert max(s["objective/kl"] for s in steps) < 20
    for key in ("objective/scores", "objective/rlhf_reward", "policy/approx_kl", "policy/clipfrac", "policy/entropy", "completions/mean_length", "reward/rules"):
        assert key in steps[-1]
    meta = json.loads((out / "tether.json").read_text())
    assert (out / "model.safetensors").exists() and meta["kind"] == "policy" and meta["algo"] == algo
    samples = [json.loads(line) for line in (out / "samples.jsonl").read_text().splitlines()]
    assert samples and {"step", "prompt", "completion", "score"} <= samples[0].keys()


def test_ratio_is_one_on_the_first_minibatch(tiny_lm_dir, task, tmp_path):
    """Old log-probs are computed on the first pass's own micro-batches: the first step's log-ratio is exactly 0
    (approx_kl and clipfrac exactly 0); later steps move."""
    from tether.recipes.grpo import train_grpo

    seen = []
    cfg = config(tiny_lm_dir, task, tmp_path / "ratio", batch_size=16, micro_batch_size=4, num_minibatches=2, ppo_epochs=2, max_steps=4)
    train_grpo(cfg, on_step=lambda step, stats: seen.append((stats["update/pass"], stats["update/minibatch"], stats)))
    (epoch, mb, stats), later = seen[0], seen[1:]
    assert (epoch, mb) == (0, 0)
    assert stats["policy/approx_kl"] == 0.0 and stats["policy/clipfrac"] == 0.0
    assert stats["policy/ratio"] == pytest.approx(1.0, abs=1e-6)
    assert any(s["policy/approx_kl"] > 0 for _, _, s in later)


def test_resume_equals_an_uninterrupted_run(tiny_lm_dir, task, tmp_path):
    from safetensors.torch import load_file

    from tether.recipes.grpo import train_grpo

    settings = dict(batch_size=16, num_minibatches=2, ppo_epochs=1, max_steps=8, save_steps=4, kl_coef=0.04)
    train_grpo(config(tiny_lm_dir, task, tmp_path / "straight", **settings))

    def crash(step, *_):
        if step == 6:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train_grpo(config(tiny_lm_dir, task, tmp_path / "resumed", **settings), on_step=crash)
    assert (tmp_path / "resumed" / "checkpoints" / "step-4").exists()
    train_grpo(config(tiny_lm_dir, task, tmp_path / "resumed", resume=True, **settings))
    straight, resumed = load_file(tmp_path / "straight" / "model.safetensors"), load_file(tmp_path / "resumed" / "model.safetensors")
    assert straight.keys() == resumed.keys()
    for name in straight:
        assert torch.equal(straight[name], resumed[name]), name
    last = {s["step"]: s["objective/scores"] for s in history(tmp_path / "resumed")}
    assert last[8] == history(tmp_path / "straight")[-1]["objective/scores"]


def test_lora_uses_the_policy_without_adapter_as_reference(tiny_lm_dir, task, tmp_path):
    from tether.recipes.grpo import train_grpo

    out = tmp_path / "lora"
    train_grpo(config(tiny_lm_dir, task, out, lora_r=4, lora_alpha=8, max_steps=3, learning_rate=5e-2))
    steps = history(out)
    assert steps[0]["objective/kl"] == pytest.approx(0.0, abs=1e-6)  # adapter starts at zero: policy == reference
    assert steps[-1]["objective/kl"] > 0
    assert (out / "adapter_config.json").exists()


# ---------------------------------------------------------------------------------------------------------------
# CLI
# ---------------------------------------------------------------------------------------------------------------


def test_cli_runs_grpo_and_rloo_with_a_python_reward(cli, tiny_lm_dir, task, tmp_path):
    (tmp_path / "checks.py").write_text("def short(prompts, completions):\n    return [-len(c) / 10 for c in completions]\n")
    for algo in ("grpo", "rloo"):
        result = cli(
            "train", algo, "--model", tiny_lm_dir, "--prompts", task / "prompts.jsonl", "--output-dir", tmp_path / algo,
            "--reward", f"rules:{task / 'rules.yaml'}@0.5", "--reward", f"py:{tmp_path / 'checks.py'}:short",
            "--group-size", "4", "--batch-size", "8", "--max-new-tokens", "4", "--max-steps", "2",
            "--set", "progress=false", "--set", "mlflow=false",
        )
        assert result.code == 0, result.stderr
        assert "done:" in result.stdout
        last = history(tmp_path / algo)[-1]
        assert "reward/short" in last and "rules/has_e" in last
        meta = json.loads((tmp_path / algo / "tether.json").read_text())
        assert meta["kind"] == "policy"


@pytest.mark.parametrize(
    ("setup", "message"),
    [
        ("empty_prompts", "no records"),
        ("missing_prompts", "prompts file not found"),
        ("bad_rules", "invalid regular expression"),
        ("missing_rules", "rules file not found"),
        ("broken_reward_model", "is not a Tether reward model"),
        ("missing_reward_model", "no such reward model folder"),
        ("bad_function", "has no function"),
        ("group_size", "multiple of group_size"),
    ],
)
def test_cli_bad_inputs_are_clear_errors(cli, tiny_lm_dir, task, tmp_path, setup, message):
    prompts, reward, extra = task / "prompts.jsonl", f"rules:{task / 'rules.yaml'}", []
    if setup == "empty_prompts":
        prompts = tmp_path / "empty.jsonl"
        prompts.write_text("")
    elif setup == "missing_prompts":
        prompts = tmp_path / "nope.jsonl"
    elif setup == "bad_rules":
        (tmp_path / "bad.yaml").write_text("rules: [{required: ['(unclosed']}]")
        reward = f"rules:{tmp_path / 'bad.yaml'}"
    elif setup == "missing_rules":
        reward = f"rules:{tmp_path / 'none.yaml'}"
    elif setup == "broken_reward_model":
        (tmp_path / "rm").mkdir()
        (tmp_path / "rm" / "config.json").write_text("{}")
        reward = str(tmp_path / "rm")
    elif setup == "missing_reward_model":
        reward = str(tmp_path / "no-rm")
    elif setup == "bad_function":
        (tmp_path / "f.py").write_text("x = 1\n")
        reward = f"py:{tmp_path / 'f.py'}:score"
    elif setup == "group_size":
        extra = ["--group-size", "3", "--batch-size", "8"]
    result = cli("train", "grpo", "--model", tiny_lm_dir, "--prompts", prompts, "--reward", reward, "--output-dir", tmp_path / "out", *extra)
    assert result.code == 2, (result.stdout, result.stderr)
    assert message in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.slow
def test_two_processes_run_the_same_schedule(tiny_lm_dir, task, tmp_path):
    """`accelerate launch` on 2 CPU processes (gloo): each process samples its own share of the prompts (whole
    groups), the metrics are averaged over processes, and the learning-rate schedule advances once per global
    step, as with 1 process (Accelerate's scheduler wrapper would step it once per process)."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    from tether.recipes.grpo import train_grpo

    train_grpo(config(tiny_lm_dir, task, tmp_path / "one", max_steps=4, lr_schedule="linear", learning_rate=1e-3))
    accelerate = Path(sys.executable).parent / "accelerate"
    env = {**os.environ, "ACCELERATE_USE_CPU": "1", "OMP_NUM_THREADS": "1", "MLFLOW_DISABLE_TELEMETRY": "true"}
    cmd = [str(accelerate), "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1", "--mixed_precision", "no",
           "--dynamo_backend", "no", "--main_process_port", "0", "-m", "tether", "train", "grpo", "--model", str(tiny_lm_dir),
           "--prompts", str(task / "prompts.jsonl"), "--reward", f"rules:{task / 'rules.yaml'}", "--output-dir", str(tmp_path / "two"),
           "--group-size", "8", "--batch-size", "32", "--max-new-tokens", "8", "--max-steps", "4", "--learning-rate", "1e-3",
           "--set", "lr_schedule=linear", "--set", "progress=false", "--set", "mlflow=false", "--set", "logging_steps=1"]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    one, two = history(tmp_path / "one"), history(tmp_path / "two")
    assert len(one) == len(two) == 4
    assert [s["train/learning_rate"] for s in two] == pytest.approx([s["train/learning_rate"] for s in one])
    assert [s["train/learning_rate"] for s in two] == pytest.approx([1e-3 * (1 - k / 4) for k in range(1, 5)])
    for step in two:
        assert 0.0 <= step["rules/has_e"] <= 1.0 and step["completions/mean_length"] > 0
    assert json.loads((tmp_path / "two" / "tether.json").read_text())["kind"] == "policy"


class _StandInVLLM:
    """A stand-in for vLLM's ``LLM``, enough of its interface for ``VLLMSampler``: the model at the given path,
    weights loaded through ``llm_engine...model_runner.model.load_weights``, ``generate`` sampling token by token
    and returning each sampled token's log-prob as vLLM does. vLLM itself needs a GPU; this exercises Tether's side
    of the path (engine options, weight copy, rollout record, importance weights, metrics) on the CPU."""

    instances: list = []

    def __init__(self, model, logprobs_mode=None, **kwargs):
        from types import SimpleNamespace

        from tether.models.hf import load_causal_lm, load_tokenizer

        self.kwargs = dict(kwargs, model=model, logprobs_mode=logprobs_mode)
        self.model = load_causal_lm(model).eval()
        self.eos = load_tokenizer(model).eos_token_id
        self.loads = 0
        runner = SimpleNamespace(model=SimpleNamespace(load_weights=self.load_weights))
        self.llm_engine = SimpleNamespace(model_executor=SimpleNamespace(driver_worker=SimpleNamespace(worker=SimpleNamespace(model_runner=runner))))
        _StandInVLLM.instances.append(self)

    def load_weights(self, weights):
        self.model.load_state_dict(dict(weights))
        self.loads += 1

    def generate(self, requests, params, use_tqdm=False):
        from types import SimpleNamespace

        outputs = []
        for request in requests:
            samples = []
            for _ in range(params.n):
                seq, tokens, logprobs = torch.tensor([request["prompt_token_ids"]]), [], []
                for _ in range(params.max_tokens):
                    with torch.no_grad():
                        logp = torch.log_softmax(self.model(seq).logits[0, -1].float() / params.temperature, -1)
                    token = int(torch.multinomial(logp.exp(), 1))
                    tokens.append(token)
                    logprobs.append({token: SimpleNamespace(logprob=float(logp[token]))})
                    seq = torch.cat([seq, torch.tensor([[token]])], dim=1)
                    if token == self.eos:
                        break
                samples.append(SimpleNamespace(token_ids=tokens, logprobs=logprobs))
            outputs.append(SimpleNamespace(outputs=samples))
        return outputs


@pytest.mark.parametrize("copy_weights", [True, False])
def test_vllm_sampler_path_with_a_stand_in_engine(tiny_lm_dir, task, tmp_path, monkeypatch, copy_weights):
    """sampler=vllm: the policy's weights reach the engine before every rollout, its log-probs come back with the
    rollout, and the trainer's importance weights are 1 when the engine holds the current policy. Without the copy
    the engine samples from a stale policy and the logged gap shows it."""
    import sys
    import types

    from tether.recipes.grpo import train_grpo

    fake = types.ModuleType("vllm")
    fake.LLM = _StandInVLLM
    fake.SamplingParams = lambda **kw: types.SimpleNamespace(**kw)
    monkeypatch.setitem(sys.modules, "vllm", fake)
    if not copy_weights:
        monkeypatch.setattr(_StandInVLLM, "load_weights", lambda self, weights: None)
    out = tmp_path / "vllm"
    train_grpo(config(tiny_lm_dir, task, out, sampler="vllm", max_steps=3, learning_rate=3e-2))
    engine = _StandInVLLM.instances[-1]
    assert engine.kwargs["logprobs_mode"] == "processed_logprobs" and engine.kwargs["model"] == str(tiny_lm_dir)
    steps = history(out)
    assert len(steps) == 3 and all("sampler/is_weight_mean" in s for s in steps)
    if copy_weights:
        assert engine.loads == 3  # once per rollout
        for s in steps:  # same weights, other batching: the log-probs agree to float noise
            assert s["sampler/logp_gap"] < 1e-4 and s["sampler/is_weight_mean"] == pytest.approx(1.0, abs=1e-4)
    else:
        assert steps[0]["sampler/logp_gap"] < 1e-4  # before the first update the stale copy is still current
        assert steps[-1]["sampler/logp_gap"] > 1e-2  # then the policy moved and the engine did not
