"""Rollout sampling alone: Tether's loop (fast decoder, or the model's own forward) against HF generate (static and
dynamic cache), on one randomly initialized Llama built from a config, on a CPU or a GPU.

Every sampler draws ``prompts x group_size`` completions of ``--max-new-tokens`` tokens at temperature 1 from the
same model; a random model almost never emits EOS, so every row runs to the limit. Modes: ``fp32`` (weights and
arithmetic), ``autocast`` (fp32 weights under bf16 autocast: how the trainers sample with ``bf16=true``), ``bf16``
(bf16 weights). Reported: new tokens per second, median of ``--repeats`` timed runs after one warm-up, interleaved.

Run:
    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/sampling.py                     # CPU, the online_rl model
    python benchmarks/sampling.py --hidden 1024 --layers 24 --heads 16 --intermediate 4096 --vocab 32000 \\
        --prompts 8 --group-size 8 --max-new-tokens 128 --modes autocast bf16   # GPU, a 0.44B Llama
"""

from __future__ import annotations

import argparse
import statistics
import time


def word_tokenizer(vocab_size: int):
    """A word-level tokenizer of ``vocab_size`` ids (pad 0, bos 1, eos 2, unk 3, then w4, w5, ...): any id the model
    samples decodes, at any vocabulary size, with nothing downloaded."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"<pad>": 0, "<s>": 1, "</s>": 2, "<unk>": 3, **{f"w{i}": i for i in range(4, vocab_size)}}
    core = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(tokenizer_object=core, pad_token="<pad>", bos_token="<s>", eos_token="</s>", unk_token="<unk>")


def main() -> None:
    import torch
    from transformers import AutoModelForCausalLM, LlamaConfig

    from tether.models.sampling import generate_hf, generate_loop

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--hidden", type=int, default=128)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--kv-heads", type=int, default=None)
    parser.add_argument("--intermediate", type=int, default=None, help="default 4 x hidden")
    parser.add_argument("--vocab", type=int, default=411)
    parser.add_argument("--prompts", type=int, default=4)
    parser.add_argument("--group-size", type=int, default=8)
    parser.add_argument("--max-new-tokens", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--modes", nargs="+", default=["fp32"], choices=["fp32", "autocast", "bf16"])
    parser.add_argument("--samplers", nargs="+", default=["loop-fast", "loop-hf", "hf-dynamic", "hf-static"])
    args = parser.parse_args()

    device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cpu":
        torch.set_num_threads(int(__import__("os").environ.get("OMP_NUM_THREADS", "1")))
    tokenizer = word_tokenizer(args.vocab)
    config = LlamaConfig(
        vocab_size=args.vocab, hidden_size=args.hidden, intermediate_size=args.intermediate or 4 * args.hidden, num_hidden_layers=args.layers,
        num_attention_heads=args.heads, num_key_value_heads=args.kv_heads or args.heads, max_position_embeddings=4096,
        pad_token_id=0, bos_token_id=1, eos_token_id=2, tie_word_embeddings=True,
    )
    torch.manual_seed(0)
    base = AutoModelForCausalLM.from_config(config).to(device).eval()
    params = sum(p.numel() for p in base.parameters())
    prompts = [" ".join(f"w{4 + (7 * i + j) % (args.vocab - 4)}" for j in range(6 + i % 5)) for i in range(args.prompts)]
    samplers = {
        "loop-fast": lambda m: generate_loop(m, tokenizer, prompts, group_size=args.group_size, max_new_tokens=args.max_new_tokens, decoder="fast"),
        "loop-hf": lambda m: generate_loop(m, tokenizer, prompts, group_size=args.group_size, max_new_tokens=args.max_new_tokens, decoder="hf"),
        "hf-dynamic": lambda m: generate_hf(m, tokenizer, prompts, group_size=args.group_size, max_new_tokens=args.max_new_tokens, cache="dynamic"),
        "hf-static": lambda m: generate_hf(m, tokenizer, prompts, group_size=args.group_size, max_new_tokens=args.max_new_tokens, cache="static"),
    }
    name = torch.cuda.get_device_name() if device == "cuda" else f"CPU, {torch.get_num_threads()} thread(s)"
    print(f"{name}; Llama {params / 1e6:.1f}M parameters (hidden {args.hidden}, {args.layers} layers, vocab {args.vocab}); "
          f"{args.prompts} prompts x {args.group_size} = {args.prompts * args.group_size} rows x {args.max_new_tokens} new tokens; "
          f"torch {torch.__version__}")
    for mode in args.modes:
        model = base.to(torch.bfloat16) if mode == "bf16" else base.float()
        times: dict[str, list[float]] = {s: [] for s in args.samplers}
        tokens: dict[str, int] = {}
        failed: dict[str, str] = {}
        for repeat in range(args.repeats + 1):  # the first run of each warms up (and checks the fast decoder once)
            for sampler in args.samplers:
                if sampler in failed:
                    continue
                with torch.autocast(device, dtype=torch.bfloat16, enabled=mode == "autocast"):
                    if device == "cuda":
                        torch.cuda.synchronize()
                    started = time.perf_counter()
                    try:
                        rollout = samplers[sampler](model)
                    except Exception as exc:  # noqa: BLE001 - report and go on with the other samplers
                        failed[sampler] = f"{type(exc).__name__}: {exc}"
                        continue
                    if device == "cuda":
                        torch.cuda.synchronize()
                    if repeat:
                        times[sampler].append(time.perf_counter() - started)
                tokens[sampler] = int(rollout.completion_mask.sum())
        print(f"mode {mode}:")
        for sampler in args.samplers:
            if sampler in failed:
                print(f"  {sampler:11s} failed: {failed[sampler][:300]}")
                continue
            seconds = statistics.median(times[sampler])
            print(f"  {sampler:11s} {seconds:8.3f} s   {tokens[sampler] / seconds:10.0f} new tokens/s   ({tokens[sampler]} tokens)")


if __name__ == "__main__":
    main()
