"""Where collectives' tensors go (cafe_dist.collectives.group_device): the one place that decides."""

from __future__ import annotations

import torch

from cafe_dist import collectives


def test_one_worker_needs_no_group_and_keeps_tensors_where_they_are():
    t = torch.arange(3)
    assert collectives.world() == (0, 1) and collectives.group_device() == torch.device("cpu")
    assert collectives.all_gather_cat(t) is t and collectives.all_reduce_sum(t) is t


def test_nccl_groups_take_the_ranks_current_cuda_device(monkeypatch):
    """NCCL refuses CPU tensors: under it every collective's tensors go to the current CUDA device."""
    monkeypatch.setattr(collectives, "world", lambda: (1, 2))
    monkeypatch.setattr(collectives.dist, "get_backend", lambda: "nccl")
    monkeypatch.setattr(collectives.torch.cuda, "current_device", lambda: 3)
    assert collectives.group_device() == torch.device("cuda", 3)
    monkeypatch.setattr(collectives.dist, "get_backend", lambda: "gloo")
    assert collectives.group_device() == torch.device("cpu")
