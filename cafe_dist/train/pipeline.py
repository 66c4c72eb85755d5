"""Training steps through TorchRec's ``TrainPipelineSparseDist``: while step t computes, batch t+1's
ids are remapped and sent to the ranks that hold their rows (the input all-to-all, on its own CUDA
stream) and batch t+2 is copied to the GPU (on another). GPU workers use it; CPU workers train in
the plain loop, where TorchRec's pipeline has no streams to overlap (``train.pipeline``).

What the pipeline needs from the model, and where it is:
- it traces the DMP-wrapped DLRM (torch.fx) to find what feeds the sharded tables: the batch
  names the DLRM's arguments (``Batch.to_proxy_tuple``), and the loss is computed around the call;
- the id transform is a parameter-free module between the batch and the sharded tables
  (``CompressedEmbedding.remap_stage``), which the pipeline runs a batch ahead (``pipeline_postproc``);
- a method whose id map changes between steps applies each change by batch number
  (``Router.before_remap``; CAFE: :mod:`cafe_dist.embeddings.cafe.schedule`), so every batch is
  mapped as the plain loop maps it; MCH cannot (``CompressedEmbedding.pipelineable``).
The method's between-steps work runs after each pipeline step, as in the plain loop.
"""

from __future__ import annotations

import contextlib
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from dataclasses import replace

import torch
from torch import nn
from torch.nn.functional import binary_cross_entropy_with_logits
from torchrec.distributed.train_pipeline import TrainPipelineSparseDist

from cafe_dist.batching import Batch
from cafe_dist.embeddings import CompressedEmbedding
from cafe_dist.train.feed import Fed


class PipelinedSteps:
    """The run's training steps through one ``TrainPipelineSparseDist`` (kept across epochs: each
    epoch's batches drain through it)."""

    def __init__(self, dmp: nn.Module, dense_opt: torch.optim.Optimizer, device: torch.device,
                 emb: CompressedEmbedding) -> None:
        self.emb = emb

        def step(batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
            loss = binary_cross_entropy_with_logits(dmp(batch.dense, batch.sparse, batch.index), batch.labels)
            return loss, loss.detach()

        self.pipeline = TrainPipelineSparseDist(dmp, dense_opt, device, execute_all_batches=True,
                                                pipeline_postproc=True, custom_model_fwd=step)

    def steps(self, feed: Iterable[Fed], first: int, check: Callable[[Fed, int], Batch], rows,
              phases) -> Iterator[tuple[Fed, torch.Tensor, dict[str, float]]]:
        """(fed, loss, the method's between-steps statistics) per step, numbered from ``first``.
        ``check(fed, step)`` gives a fed batch or raises its error (when the pipeline takes it in,
        up to two steps ahead of its training)."""
        taken: deque[Fed] = deque()  # batches in the pipeline, oldest first: the next one trained
        phases.pipelined = True

        def batches() -> Iterator[Batch]:
            for k, fed in enumerate(feed):
                batch = replace(check(fed, first + k), index=first + k)
                taken.append(fed)
                yield batch

        source = batches()
        while True:
            try:
                loss = self.pipeline.progress(source)
            except StopIteration:
                return
            phases.add("forward")  # the pipeline's step: forward, backward and both optimizers
            stats = self.emb.after_step(rows)
            phases.add("method")
            yield taken.popleft(), loss, stats

    @contextlib.contextmanager
    def paused(self) -> Iterator[None]:
        """The model as written, for an evaluation between steps: the pipeline's forwards are taken
        out and put back, keeping its batches in flight. Putting them back traces the model again
        and redoes the next batch's input distribution (its remap is kept: it is not run twice)."""
        self.pipeline.detach()
        try:
            yield
        finally:
            self.pipeline.attach()
            if self.pipeline.contexts:
                self.pipeline.wait_sparse_data_dist(self.pipeline.contexts[0])
