"""DLRM (dense arch, dot interaction, over arch) around a pluggable compressed embedding."""

from __future__ import annotations

import torch
from torch import nn
from torchrec import KeyedJaggedTensor
from torchrec.models.dlrm import DenseArch, InteractionArch, OverArch

from cafe_dist.embeddings import CompressedEmbedding


class DLRM(nn.Module):
    """TorchRec's DLRM arches, with ``self.embedding`` in place of its SparseArch.

    Kept separate from ``torchrec.models.dlrm.DLRM`` because that one takes an EBC directly and so
    has no place for an id transform or a combine step.
    """

    def __init__(self, embedding: CompressedEmbedding, num_dense: int, dense_arch: list[int],
                 over_arch: list[int], device: torch.device | None = None) -> None:
        super().__init__()
        dim = embedding.dim
        num_sparse = len(embedding.features)
        self.num_dense = num_dense
        self.embedding = embedding
        self.dense_arch = DenseArch(max(num_dense, 1), list(dense_arch) + [dim], device=device)
        self.inter_arch = InteractionArch(num_sparse_features=num_sparse)
        inter_out = dim + num_sparse + num_sparse * (num_sparse - 1) // 2
        self.over_arch = OverArch(inter_out, list(over_arch) + [1], device=device)

    def forward(self, dense: torch.Tensor, sparse: KeyedJaggedTensor, index: int | None = None) -> torch.Tensor:
        """Logits (B,). ``index``: the training batch's number, which a method that changes its id map
        between steps needs when batches are remapped ahead (``Router.before_remap``); None to score."""
        embedded_dense = self.dense_arch(dense)
        embedded_sparse = self.embedding(sparse, index)
        return self.over_arch(self.inter_arch(embedded_dense, embedded_sparse)).squeeze(-1)
