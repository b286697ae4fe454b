"""FSDP (torch's FSDP2, through accelerate) for every trainer that ``Run`` sets up: plumbing only.

`accelerate launch --use_fsdp --fsdp_version 2 ...` shards each weight, its gradient and its AdamW state over the
processes. On GPUs accelerate does it all. On CPU processes (gloo) accelerate sets FSDP up for GPU-like devices only
and would silently fall back to DDP, though torch's FSDP2 runs on gloo; ``use_fsdp_on_cpu`` switches accelerate's
state to FSDP there, so the same code path (prepare, backward, clipping, save_state / load_state, the full state
dict) runs on a laptop as on a cluster, and the CPU tests cover it.

Two rules FSDP adds, both kept here:
- every process runs each sharded module the same number of times (each forward gathers the weights from all
  processes): ``even_share`` gives every process as many passes, padding with repeats that are thrown away;
- a saved model needs whole weights: ``gather_full_weights`` replaces each shard by the full tensor, in place,
  once training is over (every process calls it).
"""

from __future__ import annotations

import os
from typing import Any, TypeVar

import torch

from tether.data.batching import shard
from tether.errors import TetherError

T = TypeVar("T")


def use_fsdp_on_cpu(accelerator: Any) -> None:
    """On CPU processes launched with ``--use_fsdp`` (``ACCELERATE_USE_FSDP=true``), make accelerate use FSDP2 as it
    does on GPUs; a no-op elsewhere."""
    if os.environ.get("ACCELERATE_USE_FSDP", "false").lower() != "true" or accelerator.num_processes < 2 or accelerator.device.type != "cpu":
        return
    from accelerate.state import PartialState
    from accelerate.utils import DistributedType, FullyShardedDataParallelPlugin

    plugin = FullyShardedDataParallelPlugin()  # from the launcher's FSDP_* variables
    if plugin.fsdp_version != 2:
        raise TetherError("FSDP on CPU processes runs torch's FSDP2 only", fix="accelerate launch --use_fsdp --fsdp_version 2 ...")
    # accelerate copies PartialState's fields into AcceleratorState whenever one is made: set both
    PartialState._shared_state["distributed_type"] = DistributedType.FSDP
    accelerator.state.distributed_type = DistributedType.FSDP
    accelerator.state.fsdp_plugin = plugin


def is_fsdp(accelerator: Any) -> bool:
    from accelerate.utils import DistributedType

    return accelerator.distributed_type == DistributedType.FSDP


def even_share(items: list[T], accelerator: Any) -> tuple[list[T], int]:
    """This process's share of ``items`` (``shard``) and, under FSDP, how many of its first items to run once more
    (results thrown away) so that every process makes the same number of passes; 0 otherwise."""
    rank, world = accelerator.process_index, accelerator.num_processes
    mine = shard(items, rank, world)
    if not is_fsdp(accelerator) or not items:
        return mine, 0
    most = -(-len(items) // world)
    return mine, most - len(mine)


def gather_full_weights(model: torch.nn.Module) -> torch.nn.Module:
    """Replace every sharded (DTensor) parameter of ``model`` by its full tensor, in place; weights tied to one
    parameter stay tied. A collective: every process calls it, in the same module order. The model is then for
    saving (``save_pretrained``, ``merge_and_unload``), not for more FSDP steps."""
    from torch.distributed.tensor import DTensor

    full: dict[int, torch.nn.Parameter] = {}
    for module in model.modules():
        for name, param in list(module._parameters.items()):
            if param is None or not isinstance(param, DTensor):
                continue
            if id(param) not in full:
                full[id(param)] = torch.nn.Parameter(param.full_tensor().detach().clone(), requires_grad=param.requires_grad)
            module._parameters[name] = full[id(param)]
    return model


def unsharded(prepared: torch.nn.Module, build: Any) -> torch.nn.Module:
    """A plain module (no FSDP) holding the whole trained weights of ``prepared``: ``build()`` makes a fresh module
    of the same structure, and the full state dict is loaded into it on every process (a collective). For work after
    training that runs on one process only (evaluation) or changes the weights (merging LoRA)."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    full = get_model_state_dict(prepared, options=StateDictOptions(full_state_dict=True))
    fresh = build()
    fresh.load_state_dict(full)
    return fresh
