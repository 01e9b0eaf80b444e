"""torch.distributed plumbing for the FSDP2 learner (docs/design.md#fsdp2-and-lora): process group, device, sharding,
cross-rank reductions and the row split of a batch. No Ray here: a rank is a plain process.
"""

from __future__ import annotations

import datetime
import os
from collections.abc import Sequence

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed._composable import checkpoint
from torch.distributed.device_mesh import DeviceMesh, init_device_mesh
from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

from policy.ports import free_port as free_port  # re-exported: the learner's callers take the rendezvous port here


def pick_device(gpus_per_rank: float, rank: int) -> torch.device:
    """cuda when the rank asked for GPUs and CUDA is there, else cpu; sets it as the current CUDA device
    (before `init_process_group`, so nccl binds this rank to it).

    Under Ray a rank sees only its own GPU(s) (CUDA_VISIBLE_DEVICES), so this is cuda:0; under torchrun it is
    ``LOCAL_RANK``; in plain processes on one machine rank r takes GPU ``r % device_count``.
    """
    if gpus_per_rank > 0 and torch.cuda.is_available():
        local = int(os.environ.get("LOCAL_RANK", rank))
        index = local % torch.cuda.device_count()
        torch.cuda.set_device(index)
        return torch.device("cuda", index)
    return torch.device("cpu")


def init_process_group(
    device: torch.device, rank: int, world_size: int, master_addr: str, master_port: int, timeout_s: float = 1800.0
) -> DeviceMesh:
    """gloo on CPU, nccl on CUDA; ``tcp://addr:port`` rendezvous. Returns the 1-D data-parallel mesh.

    Every rank must call this (it blocks until all ``world_size`` ranks have joined).
    """
    if dist.is_initialized():
        raise RuntimeError(
            "a torch.distributed process group already exists in this process; one Learner per "
            "process (call shutdown() before setting up another)"
        )
    if not 0 <= rank < world_size:
        raise ValueError(f"rank must be in [0, {world_size}), got {rank}")
    cuda = device.type == "cuda"
    if cuda:
        torch.cuda.set_device(device)  # nccl uses the current device; pick_device set it already
    dist.init_process_group(
        "nccl" if cuda else "gloo",
        init_method=f"tcp://{master_addr}:{master_port}",
        rank=rank,
        world_size=world_size,
        timeout=datetime.timedelta(seconds=timeout_s),
        device_id=device if cuda else None,
    )
    return init_device_mesh(device.type, (world_size,), mesh_dim_names=("dp",))


def mixed_precision(dtype: str, device: torch.device) -> MixedPrecisionPolicy:
    """``bfloat16``: parameters all-gathered and used in bf16, gradients reduced in fp32, the sharded (master)
    parameters and the optimizer stay fp32. FSDP2 does this on CPU too (how the CPU tests cover the path).
    ``float32``: no policy, everything fp32 (exact). ``device`` is unused (kept for callers)."""
    del device
    if dtype == "bfloat16":
        return MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
    return MixedPrecisionPolicy()


def shard(
    root: nn.Module,
    layers: Sequence[nn.Module],
    mesh: DeviceMesh,
    mp: MixedPrecisionPolicy,
    extra: Sequence[nn.Module] = (),
    *,
    checkpoint_layers: bool = False,
    reshard_after_forward: bool = True,
) -> nn.Module:
    """FSDP2: ``fully_shard`` each decoder layer (and each module of ``extra``), then the root.

    ``checkpoint_layers``: activation checkpointing per decoder layer (torch's composable ``checkpoint``, applied
    before sharding, as FSDP2 expects): backward recomputes each layer's forward instead of keeping its
    activations. ``reshard_after_forward=False``: the layers' gathered weights stay from forward to backward.
    """
    for layer in layers:
        if checkpoint_layers:
            checkpoint(layer)
        fully_shard(layer, mesh=mesh, mp_policy=mp, reshard_after_forward=reshard_after_forward)
    for module in extra:
        fully_shard(module, mesh=mesh, mp_policy=mp, reshard_after_forward=reshard_after_forward)
    fully_shard(root, mesh=mesh, mp_policy=mp)  # the root keeps FSDP2's default (not resharded: backward follows)
    return root


def all_reduce(values: Sequence[float], op: str = "sum", device: torch.device | None = None) -> list[float]:
    """Element-wise sum or max of a list of floats over all ranks (float64; identity without a group)."""
    if not dist.is_initialized() or dist.get_world_size() == 1:
        return [float(v) for v in values]
    t = torch.tensor(list(values), dtype=torch.float64, device=device or "cpu")
    dist.all_reduce(t, op=dist.ReduceOp.SUM if op == "sum" else dist.ReduceOp.MAX)
    return t.tolist()


def barrier(device: torch.device) -> None:
    if dist.is_initialized():
        if device.type == "cuda":
            dist.barrier(device_ids=[device.index])
        else:
            dist.barrier()


def rank_micro_batches(num_rows: int, rank: int, world_size: int, micro_batch: int) -> list[list[int]]:
    """Row indices of this rank's micro-batches: rank r takes rows ``r::world_size`` in chunks of
    ``micro_batch``. Every rank gets the same number of micro-batches (FSDP's collectives must match):
    a rank with fewer rows gets empty lists at the end, which the caller fills with masked dummy rows.
    """
    if num_rows < 1 or micro_batch < 1 or world_size < 1:
        raise ValueError(
            f"rank_micro_batches: need num_rows, micro_batch, world_size >= 1, got "
            f"{num_rows}, {micro_batch}, {world_size}"
        )
    rows = list(range(rank, num_rows, world_size))
    per_rank = -(-num_rows // world_size)
    count = -(-per_rank // micro_batch)
    return [rows[i * micro_batch : (i + 1) * micro_batch] for i in range(count)]
