"""What a run measures while it trains: loss and samples/s per logging window, steady-state
throughput after the warm-up steps, where step time goes, the method's statistics, evaluations;
written to the console and to MLflow by rank 0 through one call."""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING, Any, Protocol

import torch

from cafe_dist.train.checkpointer import Progress

if TYPE_CHECKING:
    from cafe_dist.embeddings.base import CompressedEmbedding
    from cafe_dist.tracking import StepLogger
    from cafe_dist.train.drift import HotSetProbe

log = logging.getLogger("cafe_dist.train")

WARMUP_STEPS = 10  # steps left out of steady_samples_per_sec and of the time split


def _duration(seconds: float) -> str:
    seconds = max(0, int(seconds))
    h, rest = divmod(seconds, 3600)
    return f"{h}h{rest // 60:02d}m" if h else f"{rest // 60}m{rest % 60:02d}s"


def eta_s(steps_left: int, step_s: float, paused_s: float, trained_s: float, pauses: int) -> float:
    """Seconds until the run ends: the steps left at the current step time, the evaluations and
    checkpoints among them at the share of time they took so far, and the final evaluation (as long
    as the mean of those so far)."""
    left = steps_left * step_s
    if trained_s > 0:
        left *= 1 + paused_s / trained_s
    return left + (paused_s / pauses if pauses else 0.0)


def stats_text(totals: dict[str, float]) -> str:
    """`` hot 1,234 churn 0.153``: counts as integers, levels with their digits."""
    return "".join(f" {k} {v:,.0f}" if float(v).is_integer() else f" {k} {v:.3g}" for k, v in totals.items())


class StepPhases:
    """Where a training step's wall time goes (this rank's view; ``bench throughput`` reports it):
    data (waiting for and collating the batch), lookup (the embedding module's forward: id
    transform, sharded lookups, combine), dense forward, backward (both optimizers included; fused
    tables update in backward) and the method's between-steps work (CAFE: sketch, sync, migration).
    Through TorchRec's pipeline the step is one call: data, dense forward and backward are then one
    figure (``dense_forward_backward``: the step less the lookup), the next batch's input work in it."""

    def __init__(self, emb: CompressedEmbedding) -> None:
        self.emb = emb
        self.pipelined = False  # TorchRec's pipeline runs forward and backward as one call ("forward")
        self.mark = time.perf_counter()
        self._lookup_start = 0.0
        self.restart()
        emb.register_forward_pre_hook(self._pre)
        emb.register_forward_hook(self._post)

    def restart(self) -> None:
        """Count from here on (after the warm-up steps, as steady_samples_per_sec does)."""
        self.s = dict.fromkeys(("data", "lookup", "forward", "backward", "method"), 0.0)
        self._method_base = dict(self.emb.phase_s or {})

    def _pre(self, module, args) -> None:
        self._lookup_start = time.perf_counter()

    def _post(self, module, args, out) -> None:
        if module.training and torch.is_grad_enabled():
            self.s["lookup"] += time.perf_counter() - self._lookup_start

    def add(self, phase: str) -> None:
        now = time.perf_counter()
        self.s[phase] += now - self.mark
        self.mark = now

    def split(self) -> dict[str, float]:
        """Seconds per phase; the method's share broken down where it says how."""
        out = {k: v for k, v in self.s.items() if k not in ("forward", "method")}
        if self.pipelined:  # the next batch's input work happens inside the step too
            del out["backward"]
            out["dense_forward_backward"] = self.s["forward"] - self.s["lookup"]
        else:
            out["dense_forward"] = self.s["forward"] - self.s["lookup"]
        parts = self.emb.phase_s
        out.update({k: v - self._method_base.get(k, 0.0) for k, v in parts.items()} if parts
                   else {"method": self.s["method"]})
        return out


class Sink(Protocol):
    def write(self, step: int, values: dict[str, float], line: str) -> None: ...


class ConsoleSink:
    def write(self, step: int, values: dict[str, float], line: str) -> None:
        log.info("%s", line)


class MlflowSink:
    def __init__(self, tracking: StepLogger) -> None:
        self.tracking = tracking

    def write(self, step: int, values: dict[str, float], line: str) -> None:
        self.tracking.log(step, values)


class Metrics:
    """Rank 0 writes (every rank measures its own steps and time split). Time spent evaluating or
    checkpointing is :meth:`pause`-d: it counts neither as training time nor in a window's rate."""

    def __init__(self, emb: CompressedEmbedding, progress: Progress, *, chief: bool, rows_per_step: int,
                 log_every: int, sinks: list[Sink], total_steps: int | None = None,
                 probe: HotSetProbe | None = None) -> None:
        self.emb, self.progress, self.chief, self.total_steps = emb, progress, chief, total_steps
        self.rows_per_step, self.log_every, self.sinks, self.probe = rows_per_step, log_every, sinks, probe
        self.phases = StepPhases(emb)
        self.first_step = progress.step
        self.resumed_samples, self.prior_train_s = progress.samples, progress.train_time_s  # earlier attempts
        self.loop_start = time.perf_counter()  # wall time, data loading included: what a user waits for
        self.paused_s, self.pauses = 0.0, 0
        self.warm: tuple[float, float, int] | None = None  # (time, paused_s, samples) after the warm-up
        self.window_loss, self.window_steps, self.window_start = 0.0, 0, time.perf_counter()

    def trained_s(self, now: float | None = None) -> float:
        return self.prior_train_s + (now or time.perf_counter()) - self.loop_start - self.paused_s

    def pause(self, started: float) -> None:
        """What ran since ``started`` (an evaluation, a checkpoint) was not training."""
        spent = time.perf_counter() - started
        self.paused_s += spent
        self.pauses += 1
        self.window_start += spent

    def write(self, step: int, values: dict[str, float], line: str) -> None:
        if self.chief:
            for sink in self.sinks:
                sink.write(step, values, line)

    def step_done(self, epoch: int, loss: torch.Tensor) -> None:
        p = self.progress
        if p.step - self.first_step == WARMUP_STEPS:  # steady state from here: JIT compiles, caches warm
            self.warm = (time.perf_counter(), self.paused_s, p.samples)
            self.phases.restart()
        self.window_loss += float(loss.detach())
        self.window_steps += 1
        if not self.chief:
            return
        now = time.perf_counter()
        rate = self.window_steps * self.rows_per_step / (now - self.window_start)
        loss_avg = self.window_loss / self.window_steps
        if p.step % self.log_every:
            if p.step - self.first_step == WARMUP_STEPS:  # a first sign of life, on the console only
                log.info("epoch %d %s loss %.4f %s samples/s (warming up)", epoch, self._where(rate), loss_avg,
                         f"{rate:,.0f}")
            return
        extra = stats_text(p.totals)
        values: dict[str, float] = {"loss": loss_avg, "samples_per_sec": rate, **p.totals}
        if self.probe is not None:  # rows consumed so far = position in the (time-ordered) data
            p.trace.append([p.step, p.samples, self.probe(p.samples)])
            extra += f" top-ids hot {p.trace[-1][2]:.2f}"
            values["hot_top_ids"] = p.trace[-1][2]
        if self.emb.overhead_s is not None:
            values["sync_overhead"] = self.emb.overhead_s / self.trained_s(now)
        self.write(p.step, values, f"epoch {epoch} {self._where(rate)} loss {loss_avg:.4f} {rate:,.0f} samples/s"
                                   f"{extra}")
        self.window_loss, self.window_steps, self.window_start = 0.0, 0, now

    def _where(self, rate: float) -> str:
        """``step S/T (P%, ETA …)`` at the current rate, evaluations included (``step S`` when the
        total is unknown)."""
        step, total = self.progress.step, self.total_steps
        if not total:
            return f"step {step:,}"
        step_s = self.rows_per_step / rate if rate > 0 else 0.0
        left_s = eta_s(total - step, step_s, self.paused_s, self.trained_s() - self.prior_train_s, self.pauses)
        return f"step {step:,}/{total:,} ({100 * step / total:.0f}%, ETA {_duration(left_s)})"

    def evaluation(self, step: int, result: dict[str, float]) -> None:
        self.write(step, {"auc": result["auc"], "logloss": result["logloss"]},
                   f"eval at step {step}: auc {result['auc']:.4f} logloss {result['logloss']:.4f}")

    def summary(self, end: float) -> dict[str, Any]:
        """Throughput of this attempt (all of it, and after the warm-up) and its time split."""
        p, attempt_s = self.progress, self.trained_s(end) - self.prior_train_s
        warm = self.warm
        steady = ((p.samples - warm[2]) / (end - warm[0] - (self.paused_s - warm[1]))
                  if warm is not None and p.samples > warm[2] else None)
        return {"samples_per_sec": (p.samples - self.resumed_samples) / attempt_s if attempt_s > 0 else 0.0,
                "steady_samples_per_sec": steady,  # after the first WARMUP_STEPS of this attempt
                "time_split_s": self.phases.split()}  # steady state too, where the run had more than WARMUP_STEPS
