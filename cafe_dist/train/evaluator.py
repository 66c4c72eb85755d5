"""When to evaluate, what (test AUC and logloss over every rank's test shard), and whether the
target AUC is reached."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch.nn.functional import binary_cross_entropy_with_logits
from torchmetrics.classification import BinaryAUROC

from cafe_dist.batching import Collator
from cafe_dist.errors import BadInputError


def evaluate(model: torch.nn.Module, shard, collate: Collator, device: torch.device,
             batch_size: int) -> dict[str, float]:
    """AUC and logloss over this rank's test shard, reduced across all ranks."""
    model.eval()
    auroc = BinaryAUROC().to(device)
    totals = torch.zeros(2, dtype=torch.float64, device=device)  # (sum of losses, rows)
    with torch.no_grad():
        for np_batch in shard.iter_batches(batch_size=batch_size, batch_format="numpy",
                                           drop_last=False, prefetch_batches=2):
            try:
                batch = collate(np_batch).to(device)
            except BadInputError as e:
                raise BadInputError(f"test split, rank {dist.get_rank()}: {e}") from None
            logits = model(batch.dense, batch.sparse)
            auroc.update(torch.sigmoid(logits), batch.labels.long())
            totals[0] += binary_cross_entropy_with_logits(logits, batch.labels, reduction="sum").double()
            totals[1] += len(batch.labels)
    dist.all_reduce(totals)
    model.train()
    if totals[1] == 0:
        return {"auc": float("nan"), "logloss": float("nan"), "eval_rows": 0}
    return {"auc": float(auroc.compute()), "logloss": float(totals[0] / totals[1]),
            "eval_rows": int(totals[1])}


@dataclass
class Evaluation:
    step: int
    result: dict[str, float]


class Evaluator:
    """Evaluates every ``every`` steps (every rank at the same step: the AUC is reduced) and at the
    end, unless the last periodic evaluation was at the last step; remembers where ``target_auc``
    was first reached."""

    def __init__(self, model: torch.nn.Module, shard, collate: Collator, device: torch.device, batch_size: int,
                 every: int | None, target_auc: float | None) -> None:
        self.model, self.shard, self.collate, self.device, self.batch_size = model, shard, collate, device, batch_size
        self.every, self.target_auc = every, target_auc
        self.last: Evaluation | None = None
        self.reached_at: int | None = None

    def due(self, step: int) -> bool:
        return self.every is not None and step % self.every == 0

    def _evaluate(self, step: int) -> dict[str, float]:
        result = evaluate(self.model, self.shard, self.collate, self.device, self.batch_size)
        self.last = Evaluation(step, result)
        return result

    def run(self, step: int) -> dict[str, float]:
        """A periodic evaluation: it may reach the target AUC."""
        result = self._evaluate(step)
        if self.target_auc is not None and self.reached_at is None and result["auc"] >= self.target_auc:
            self.reached_at = step
        return result

    @property
    def target_reached(self) -> bool:
        return self.reached_at is not None

    def final(self, step: int) -> tuple[dict[str, float], bool]:
        """The result at ``step`` and whether it is new (not the periodic evaluation of that step)."""
        if self.last is not None and self.last.step == step:
            return dict(self.last.result), False
        return dict(self._evaluate(step)), True
