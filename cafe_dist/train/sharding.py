"""Sharding plan for the embedding tables, identical on every rank."""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import nn
from torchrec.distributed.model_parallel import get_default_sharders
from torchrec.distributed.planner import EmbeddingShardingPlanner, ParameterConstraints, Topology
from torchrec.distributed.types import ShardingPlan

CPU_SHARDING = ["table_wise", "column_wise", "table_column_wise", "data_parallel"]


def make_plan(model: nn.Module, table_names: list[str], device: torch.device, world_size: int,
              local_world_size: int, batch_size: int, sharding_types: list[str] | None) -> ShardingPlan:
    """Plan with TorchRec's planner; on CPU only the sharding types fbgemm's CPU kernels support."""
    if sharding_types is None:
        sharding_types = ["table_wise"] if device.type == "cpu" else None
    elif device.type == "cpu":
        bad = [s for s in sharding_types if s not in CPU_SHARDING]
        if bad:
            raise ValueError(
                f"ray.sharding_types {bad} need GPU workers (TorchRec allows row_wise only on CUDA); "
                f"on CPU use {', '.join(CPU_SHARDING)}, or set ray.use_gpu=true"
            )
    constraints = (
        {name: ParameterConstraints(sharding_types=list(sharding_types)) for name in table_names}
        if sharding_types else None
    )
    topology = Topology(world_size=world_size, local_world_size=local_world_size,
                        compute_device=device.type)
    planner = EmbeddingShardingPlanner(topology=topology, constraints=constraints, batch_size=batch_size)
    return planner.collective_plan(model, get_default_sharders(), dist.GroupMember.WORLD)
