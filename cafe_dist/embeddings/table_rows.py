"""Read and write rows of (possibly sharded) embedding tables between training steps.

CAFE copies a hash row into a newly assigned hot row, MCH clears rows it evicts, and both reset the
fused optimizer's state for those rows. Under DMP a row may live on another rank (table-wise), be
split across ranks (column-wise, row-wise) or be replicated (data-parallel), so reads are a sum
all-reduce of what each rank's local shards hold; every rank must make the same calls in the same
order (the hot-set changes they apply are identical on every rank).
"""

from __future__ import annotations

import torch
from torch import nn
from torch.distributed._shard.sharded_tensor import ShardedTensor

from cafe_dist.collectives import all_reduce_sum, world


def _pieces(t: torch.Tensor | ShardedTensor) -> list[tuple[int, int, torch.Tensor]]:
    """(first row, first column, local tensor) of each piece of ``t`` this rank holds."""
    if isinstance(t, ShardedTensor):
        return [(s.metadata.shard_offsets[0], s.metadata.shard_offsets[1] if len(s.metadata.shard_offsets) > 1 else 0,
                 s.tensor) for s in t.local_shards()]
    return [(0, 0, t)]


class TableRows:
    """Row access to the tables of one ``EmbeddingBagCollection`` (sharded by DMP or not)."""

    def __init__(self, model: nn.Module, optimizer_state: dict | None = None, dense_optimizer=None) -> None:
        """``optimizer_state``: the fused optimizer's state dict (``dmp.fused_optimizer``);
        ``dense_optimizer``: the keyed optimizer that trains data-parallel tables, whose state
        appears only after its first step."""
        self.weights: dict[str, torch.Tensor | ShardedTensor] = {}
        for key, value in model.state_dict(keep_vars=True).items():
            if ".embedding_bags." in key and key.endswith(".weight"):
                self.weights[key.split(".embedding_bags.")[1][: -len(".weight")]] = value
        self.states: dict[str, list[torch.Tensor | ShardedTensor]] = {}
        for key, state in (optimizer_state or {}).items():
            if ".embedding_bags." in key:
                name = key.split(".embedding_bags.")[1][: -len(".weight")]
                self.states[name] = [v for v in state.values() if isinstance(v, (torch.Tensor, ShardedTensor))]
        self.dense_optimizer = dense_optimizer

    def _replicated(self, t: torch.Tensor | ShardedTensor) -> bool:
        return not isinstance(t, ShardedTensor)

    @torch.no_grad()
    def read(self, requests: list[tuple[str, torch.Tensor]]) -> list[torch.Tensor]:
        """Rows ``rows`` of each ``(table, rows)``; a collective when any table is sharded."""
        rank, _ = world()
        outs = []
        for name, rows in requests:
            w = self.weights[name]
            out = torch.zeros((rows.numel(), w.shape[1]), dtype=torch.float32, device=rows.device)
            if not self._replicated(w) or rank == 0:
                for r0, c0, local in _pieces(w):
                    hit = (rows >= r0) & (rows < r0 + local.shape[0])
                    if hit.any():
                        vals = local[(rows[hit] - r0).to(local.device)].to(out)
                        out[hit, c0:c0 + local.shape[1]] = vals
            outs.append(out)
        if not outs:
            return outs
        flat = all_reduce_sum(torch.cat([o.reshape(-1) for o in outs]))
        return [part.view_as(o) for part, o in zip(flat.split([o.numel() for o in outs]), outs)]

    @torch.no_grad()
    def write(self, name: str, rows: torch.Tensor, values: torch.Tensor) -> None:
        for r0, c0, local in _pieces(self.weights[name]):
            hit = (rows >= r0) & (rows < r0 + local.shape[0])
            if hit.any():
                local[(rows[hit] - r0).to(local.device)] = values[hit, c0:c0 + local.shape[1]].to(local)

    def _dense_states(self, name: str) -> list[torch.Tensor]:
        """State tensors the dense optimizer keeps for a data-parallel table (e.g. Adagrad's sum)."""
        opt = self.dense_optimizer
        if opt is None:
            return []
        for key, param in getattr(opt, "params", {}).items():
            if key.endswith(f".embedding_bags.{name}.weight"):
                return [v for v in opt.state.get(param, {}).values()
                        if isinstance(v, torch.Tensor) and v.dim() >= 1 and v.shape[0] == param.shape[0]]
        return []

    @torch.no_grad()
    def reset_state(self, name: str, rows: torch.Tensor) -> None:
        """Zero the optimizer state (e.g. row-wise Adagrad's sum of squares) of ``rows``."""
        for state in self.states.get(name, []) + self._dense_states(name):
            for r0, _, local in _pieces(state):
                hit = (rows >= r0) & (rows < r0 + local.shape[0])
                if hit.any():
                    local[(rows[hit] - r0).to(local.device)] = 0
