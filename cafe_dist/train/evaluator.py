"""When to evaluate, what (test AUC and logloss over every rank's part of the test split), and whether the
target AUC is reached."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch.nn.functional import binary_cross_entropy_with_logits
from torchmetrics.classification import BinaryAUROC

from cafe_dist.batching import Collator
from cafe_dist.collectives import all_reduce_sum
from cafe_dist.data.reader import RowReader, SplitFiles
from cafe_dist.errors import BadInputError
from cafe_dist.train.feed import Feed
from cafe_dist.train.row_order import eval_batches


def evaluate(model: torch.nn.Module, split: SplitFiles, collate: Collator, device: torch.device,
             batch_size: int) -> dict[str, float]:
    """AUC and logloss over this rank's part of the test split, reduced across all ranks."""
    model.eval()
    auroc = BinaryAUROC().to(device)
    totals = torch.zeros(2, dtype=torch.float64, device=device)  # (sum of losses, rows)
    rank, world = dist.get_rank(), dist.get_world_size()
    plan = ([rows] for rows in eval_batches(split.rows, world, rank, batch_size))
    with torch.no_grad(), Feed(RowReader(split, collate.columns), collate, device, plan, digests=False) as feed:
        for fed in feed:
            if fed.error is not None:
                (a, b), = fed.rows
                raise BadInputError(f"test split, rank {rank} (rows {a:,}–{b - 1:,} of the split; below, the row "
                                    f"within the batch): {fed.error}") from None
            batch = fed.batch
            logits = model(batch.dense, batch.sparse)
            auroc.update(torch.sigmoid(logits), batch.labels.long())
            totals[0] += binary_cross_entropy_with_logits(logits, batch.labels, reduction="sum").double()
            totals[1] += len(batch.labels)
    all_reduce_sum(totals)
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

    def __init__(self, model: torch.nn.Module, split: SplitFiles, collate: Collator, device: torch.device,
                 batch_size: int, every: int | None, target_auc: float | None) -> None:
        self.model, self.split, self.collate, self.device, self.batch_size = model, split, collate, device, batch_size
        self.every, self.target_auc = every, target_auc
        self.last: Evaluation | None = None
        self.reached_at: int | None = None

    def due(self, step: int) -> bool:
        return self.every is not None and step % self.every == 0

    def _evaluate(self, step: int) -> dict[str, float]:
        result = evaluate(self.model, self.split, self.collate, self.device, self.batch_size)
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
