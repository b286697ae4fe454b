"""The LM head in chunks (lm_head_chunk) against the plain head: one TokenLogProbs forward + backward, time and peak RSS.

    python benchmarks/lm_head.py MODEL_DIR full|lora CHUNK ROWS LENGTH
    python benchmarks/lm_head.py /tmp/smollm2 full 0 8 256      # the plain head (MODEL_DIR from `tether models import-gguf`)
    python benchmarks/lm_head.py /tmp/smollm2 full 1024 8 256   # chunks of 1024 scored tokens

Random token ids, half prompt and half completion (the completion scored); prints the median of the last three of four
steps. Run each setting in its own process (peak RSS per run).
"""

from __future__ import annotations

import resource
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main(model_dir: str, mode: str, chunk: int, rows: int, length: int) -> None:
    from transformers import AutoModelForCausalLM

    from tether.models.logprobs import TokenLogProbs, collate_completions

    torch.set_num_threads(2)
    lm = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    if mode == "lora":
        from peft import LoraConfig, get_peft_model

        lm = get_peft_model(lm, LoraConfig(r=8, lora_alpha=16, target_modules=["q_proj", "k_proj", "v_proj", "o_proj"]))
    module = TokenLogProbs(lm, chunk_tokens=chunk).train()
    generator = torch.Generator().manual_seed(0)
    vocab = lm.config.vocab_size
    examples = [(torch.randint(0, vocab, (length // 2,), generator=generator).tolist(), torch.randint(0, vocab, (length // 2,), generator=generator).tolist()) for _ in range(rows)]
    batch = collate_completions(examples, 0)
    times = []
    for _ in range(4):
        started = time.perf_counter()
        (-module(**batch.model_inputs("cpu")).mean()).backward()
        lm.zero_grad(set_to_none=True)
        times.append(time.perf_counter() - started)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"{mode} chunk={chunk} rows={rows}x{length} scored={batch.targets.numel()} step_s={sorted(times[1:])[1]:.3f} peak_rss_mb={peak:.0f}")


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5]))
