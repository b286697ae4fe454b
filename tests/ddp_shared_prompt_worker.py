"""Run by test_rollout.py on 2 gloo processes: the shared-prompt forward (two model calls, one backward) under DDP
gives each process the gradient of the whole batch, averaged, as DDP promises with one call."""

from __future__ import annotations

import os
import sys

import torch
import torch.distributed as dist


def main(model_dir: str, rank: int, world: int, port: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=port)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    torch.set_num_threads(1)
    from tether.models.hf import load_causal_lm, load_tokenizer
    from tether.models.logprobs import completion_logps
    from tether.models.sampling import generate_hf

    torch.manual_seed(0)
    model, tokenizer = load_causal_lm(model_dir), load_tokenizer(model_dir)
    rollout = generate_hf(model.eval(), tokenizer, ["Hi", "Your order has shipped and", "Please", "Thank you"], group_size=4, max_new_tokens=5, cache="dynamic")
    model.train()
    for module in model.modules():
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0
    ids, mask, width, cmask = rollout.input_ids, rollout.attention_mask, rollout.completion_ids.shape[1], rollout.completion_mask

    def loss_of(net, rows, share):
        logps, _ = completion_logps(net, ids[rows], mask[rows], width, share_prompts=share)
        return (logps * cmask[rows]).sum() / len(rows)

    # Every process: the full batch's gradient, no DDP, one forward per row (the reference).
    loss_of(model, torch.arange(len(ids)), share=False).backward()
    expected = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad()
    ddp = torch.nn.parallel.DistributedDataParallel(model)
    mine = torch.arange(len(ids))[rank::world]  # this process's half: rows of every group, so prompts repeat
    loss_of(ddp, mine, share=True).backward()
    worst = max(float((p.grad - expected[n]).abs().max()) for n, p in model.named_parameters())
    scale = max(float(g.abs().max()) for g in expected.values())
    print(f"rank {rank} max gradient difference {worst:.3g} (largest gradient {scale:.3g})", flush=True)
    assert worst <= 1e-4 * scale + 1e-7, worst
    dist.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4])
