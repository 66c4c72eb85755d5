"""``cafe-dist plan``: size a cluster before renting it.

TorchRec's own planner (the one every worker runs at start-up, :mod:`cafe_dist.train.sharding`)
plans the job's tables over a topology of ``world_size`` devices that need not exist here: the
model is built on the meta device, so a 96 GB CriteoTB table costs nothing to plan. Per rank the
plan says which tables (or shards) it holds and what they take:

- ``weights``: the rows of its shards (fp32), exact from the plan's shard sizes;
- ``optimizer``: RowWiseAdagrad's state of those rows (one fp32 per row), exact;
- ``io_buffers``: the planner's estimate of the KJT input and pooled output buffers of its shards
  (its storage estimate less the two above);
- ``method_state``: what every worker keeps beside the tables (CAFE's HotSketch and hot map, MCH's
  id maps, LMA's signatures: ``CompressedEmbedding.aux_bytes``), replicated;
- ``values``: the lists of raw values of the features with tables of their own, 8 B a value
  (``CompressedEmbedding.values_bytes``), replicated: ``full``'s vocabulary, which grows with the
  data; a compressed method's lists of its few small uncompressed features;
- ``dense``: the MLPs and their Adagrad state, replicated (data parallel).

Methods with a hot set (CAFE) also get each rank's hot rows and the hot lookups it is expected to
serve per step, from a profile's value laws (the traffic of a perfect hot set, slot by slot,
strongest first, placed where the method puts each slot), and ``hot_balance``: the busiest rank's
expected hot lookups over the mean rank's (1.0: even; under table-wise sharding the rank holding
the hot rows serves them all, so W).

For each ratio it also finds the smallest world size at which the planner finds a plan (trying
1, 2, 4 and then multiples of ``gpus_per_node``, starting from what the bytes alone require), and
what the driver needs before training: ``full`` counts every train value to build its vocabulary
(16 B per distinct value while counting) unless the dataset lists every feature; compressed
methods need nothing there.
"""

from __future__ import annotations

import logging
import math
import warnings
from dataclasses import asdict, dataclass, field
from typing import Any

import torch

from cafe_dist.config import ConfigError, JobConfig
from cafe_dist.data.distinct import EXACT, EXACT_LIMIT, SKETCH
from cafe_dist.data.profile import Profile
from cafe_dist.data.schema import CRITEO_DENSE, CRITEO_KAGGLE_CARDINALITIES, CRITEO_SPARSE, DatasetMeta
from cafe_dist.logs import quiet

log = logging.getLogger(__name__)

GIB = 1024**3
FLOAT_BYTES = 4
# train rows of the profiles (6/7 of Criteo Kaggle's 45.8 M; CriteoTB days 0-22 of ~4.37 B)
PROFILE_TRAIN_ROWS = {"criteo-kaggle": 39_291_958, "criteo-tb": 4_195_197_692}
MAX_WORLD_SIZE = 4096
COUNT_BYTES = 16  # a distinct value and its count while full's vocabulary is counted (CountMerger)


def profile_meta(name: str) -> DatasetMeta:
    """A dataset description with a profile's published cardinalities (no data needed)."""
    from cafe_dist.data.profile import CRITEO_TB_CARDINALITIES

    cards = {"criteo-kaggle": CRITEO_KAGGLE_CARDINALITIES, "criteo-tb": CRITEO_TB_CARDINALITIES}.get(name)
    if cards is None:
        raise ConfigError(f"unknown profile {name!r}: criteo-kaggle or criteo-tb")
    rows = PROFILE_TRAIN_ROWS[name]
    # as a conversion would count them: features of at most EXACT_LIMIT values exactly (and listed)
    counted = {f: EXACT if c - 1 <= EXACT_LIMIT else SKETCH for f, c in zip(CRITEO_SPARSE, cards)}
    return DatasetMeta(format="criteo", dense_features=list(CRITEO_DENSE), sparse_features=list(CRITEO_SPARSE),
                       cardinality=dict(zip(CRITEO_SPARSE, cards)), raw_distinct=dict(zip(CRITEO_SPARSE, cards)),
                       rows={"train": rows, "test": rows // 23}, bad_rows=0, extra={"profile": name},
                       distinct_counted=counted)


@dataclass(frozen=True)
class Topo:
    world_size: int
    gpus_per_node: int
    device_gb: float  # memory per device the tables train from (HBM on GPUs, DRAM on CPUs)
    device: str  # "cuda" or "cpu"


@dataclass
class RankMemory:
    rank: int
    tables: list[str] = field(default_factory=list)
    weights: int = 0
    optimizer: int = 0
    io_buffers: int = 0
    method_state: int = 0
    values: int = 0
    dense: int = 0
    hot_rows: int = 0  # hot slots whose rows this rank holds
    hot_lookups: float = 0.0  # expected lookups of hot rows this rank serves per step

    @property
    def total(self) -> int:
        return self.weights + self.optimizer + self.io_buffers + self.method_state + self.values + self.dense


@dataclass
class RatioPlan:
    """The plan of one compression ratio (``fits`` False: ``error`` says what does not fit where)."""

    ratio: float
    method: str
    table_bytes: int  # every table's rows once (what the ranks' weights must add up to)
    embedding_bytes: int  # the method's whole budget (tables + method state + lists of values)
    method_state_bytes: int  # per rank, replicated
    values_bytes: int  # per rank, replicated: the lists of values of the uncompressed features
    driver_bytes: int  # on the driver before training: counting full's vocabulary (0: nothing to count)
    tables: list[dict[str, Any]]  # table, rows, dim, sharding_type, ranks
    ranks: list[RankMemory]
    fits: bool
    error: str | None = None
    min_world_size: int | None = None
    hot_balance: float | None = None  # max / mean of the ranks' expected hot lookups (None: no hot rows)
    # the least hot_balance any placement of whole rows reaches: the busiest row's lookups over the mean rank's
    hot_balance_floor: float | None = None
    hot_traffic: str | None = None  # where the expected hot lookups come from

    def to_json(self) -> dict[str, Any]:
        out = asdict(self)
        out["ranks"] = [{**asdict(r), "total": r.total} for r in self.ranks]
        return out


def _build(job: JobConfig, meta: DatasetMeta, method: str, ratio: float):
    """The job's DLRM with ``method`` at ``ratio`` on the meta device (nothing allocated)."""
    from torchrec.optim import RowWiseAdagrad
    from torchrec.optim.apply_optimizer_in_backward import apply_optimizer_in_backward

    from cafe_dist.embeddings.registry import method_class
    from cafe_dist.model_spec import ModelSpec

    spec = ModelSpec.from_job(job, method=method, ratio=ratio)
    spec = spec.with_options(method_class(method).planning_options(spec.options))  # sizes only, no data files
    model = spec.build(meta, torch.device("meta"))
    emb = model.embedding
    apply_optimizer_in_backward(RowWiseAdagrad, emb.ebc.parameters(), {"lr": job.train.lr})  # as in training
    return model, emb


def _sharding_types(job: JobConfig, device: str) -> list[str] | None:
    from cafe_dist.train.sharding import CPU_SHARDING

    types = job.ray.sharding_types
    if types is None:
        return ["table_wise"] if device == "cpu" else None
    if device == "cpu" and (bad := [s for s in types if s not in CPU_SHARDING]):
        raise ConfigError(f"ray.sharding_types {bad} need GPU workers; plan with ray.use_gpu=true or use "
                          f"{', '.join(CPU_SHARDING)}")
    return list(types)


def _need(table) -> int:
    """Bytes of a table's rows with their RowWiseAdagrad state (one fp32 per row)."""
    return table.num_embeddings * (table.embedding_dim + 1) * FLOAT_BYTES


def _precheck(emb, topo: Topo, types: list[str] | None, fixed: int) -> str | None:
    """What cannot fit whatever the planner does, in words; None when the bytes alone allow it."""
    cap = topo.device_gb * GIB - fixed
    if cap <= 0:
        return (f"each device's {topo.device_gb:g} GiB is taken by the state every worker keeps "
                f"({fixed / GIB:.2f} GiB: the method's state and the dense model)")
    splittable = types is None or any(t in ("row_wise", "column_wise", "table_row_wise", "table_column_wise",
                                            "grid_shard") for t in types)
    if not splittable:
        for t in emb.tables:
            need = _need(t)
            if need > cap:
                return (f"table {t.name} ({t.num_embeddings:,} x {t.embedding_dim}: {need / GIB:.2f} GiB with its "
                        f"optimizer state) does not fit one device ({cap / GIB:.2f} GiB free of "
                        f"{topo.device_gb:g} GiB), and ray.sharding_types {types} cannot split a table: add "
                        "row_wise (GPU) or column_wise, or compress more")
    total = sum(_need(t) for t in emb.tables)
    if total > cap * topo.world_size:
        need = math.ceil(total / cap)
        return (f"the tables take {total / GIB:.2f} GiB with their optimizer state; {topo.world_size} device(s) "
                f"hold {cap * topo.world_size / GIB:.2f} GiB beside the per-worker state: at least {need} devices")
    return None


def _planner(topo: Topo, types: list[str] | None, table_names: list[str], batch_size: int):
    from torchrec.distributed.planner import EmbeddingShardingPlanner, ParameterConstraints, Topology

    kw = {"hbm_cap": int(topo.device_gb * GIB)} if topo.device == "cuda" else {"ddr_cap": int(topo.device_gb * GIB)}
    topology = Topology(world_size=topo.world_size, local_world_size=min(topo.gpus_per_node, topo.world_size),
                        compute_device=topo.device, **kw)
    constraints = {n: ParameterConstraints(sharding_types=list(types)) for n in table_names} if types else None
    return EmbeddingShardingPlanner(topology=topology, constraints=constraints, batch_size=batch_size)


def _try_plan(model, emb, topo: Topo, types: list[str] | None, batch_size: int, fixed: int):
    """(planner, its plan) or (None, why not)."""
    from torchrec.distributed.model_parallel import get_default_sharders
    from torchrec.distributed.planner.types import PlannerError

    why = _precheck(emb, topo, types, fixed)
    if why is not None:
        return None, why
    try:
        with warnings.catch_warnings():  # "HeuristicalStorageReservation over-estimates dense tensors in dry runs"
            warnings.simplefilter("ignore")
            planner = _planner(topo, types, [t.name for t in emb.tables], batch_size)
            plan = planner.plan(model, get_default_sharders())
    except PlannerError as e:
        return None, f"TorchRec's planner found no plan on {topo.world_size} device(s): {str(e).splitlines()[0]}"
    return planner, plan


def _dense_bytes(model) -> int:
    params = sum(p.numel() for n, p in model.named_parameters() if not n.startswith("embedding.ebc."))
    return params * FLOAT_BYTES * 2  # weights + Adagrad's sum


def plan_ratio(job: JobConfig, meta: DatasetMeta, topo: Topo, ratio: float, find_min: bool = True,
               traffic: Profile | None = None) -> RatioPlan:
    """Plan ``ratio`` (1: ``full``) on ``topo``; with ``find_min``, also the smallest world size that
    fits; with ``traffic``, the ranks' expected hot lookups under that profile's value laws."""
    method = "full" if ratio <= 1 else job.embedding.method
    model, emb = _build(job, meta, method, ratio)
    types = _sharding_types(job, topo.device)
    fixed = emb.aux_bytes() + emb.values_bytes() + _dense_bytes(model)
    bs = job.train.batch_size
    table_bytes = sum(t.num_embeddings * t.embedding_dim * FLOAT_BYTES for t in emb.tables)
    counted = all(meta.counted_exactly(f) for f in meta.sparse_features)
    driver = 0 if method != "full" or counted else COUNT_BYTES * sum(meta.raw_distinct.values())
    out = RatioPlan(ratio=ratio, method=method, table_bytes=table_bytes, embedding_bytes=emb.embedding_bytes(),
                    method_state_bytes=emb.aux_bytes(), values_bytes=emb.values_bytes(), driver_bytes=driver,
                    tables=[], ranks=[RankMemory(r) for r in range(topo.world_size)], fits=False)
    planner, plan = _try_plan(model, emb, topo, types, bs, fixed)
    if planner is None:
        out.error = plan
    else:
        out.fits = True
        _fill(out, planner, plan, emb, fixed - emb.aux_bytes() - emb.values_bytes(), topo)
        if traffic is not None:
            _hot_traffic(out, plan, emb, traffic, bs)
    if find_min:
        out.min_world_size = smallest_world_size(model, emb, topo, types, bs, fixed)
    return out


def _fill(out: RatioPlan, planner, plan, emb, dense: int, topo: Topo) -> None:
    """Per rank: the shards the plan puts there and their bytes."""
    storage_of = {}  # (table, rank) -> the planner's storage estimate of the shards there
    for option in planner._best_plan or []:  # noqa: SLF001 (the only place the planner keeps its estimates)
        for shard in option.shards:
            s = shard.storage
            est = (s.hbm if topo.device == "cuda" else s.ddr) if s is not None else 0
            storage_of[(option.name, shard.rank)] = storage_of.get((option.name, shard.rank), 0) + est
    for tables in plan.plan.values():
        for name, ps in tables.items():
            spec = ps.sharding_spec
            shards = [(md.shard_sizes, md.placement.rank()) for md in spec.shards] if spec is not None else \
                [(None, r) for r in (ps.ranks or range(topo.world_size))]
            table = next(t for t in emb.tables if t.name == name)
            out.tables.append({"table": name, "rows": table.num_embeddings, "dim": table.embedding_dim,
                               "sharding_type": ps.sharding_type, "ranks": sorted({r for _, r in shards})})
            placed: dict[int, int] = {}  # rank -> bytes of this table's rows and their optimizer state there
            for size, rank in shards:
                rows, cols = size if size is not None else (table.num_embeddings, table.embedding_dim)
                rm = out.ranks[rank]
                if name not in rm.tables:
                    rm.tables.append(name)
                rm.weights += rows * cols * FLOAT_BYTES
                rm.optimizer += rows * FLOAT_BYTES
                placed[rank] = placed.get(rank, 0) + rows * (cols + 1) * FLOAT_BYTES
            for rank, held in placed.items():  # the rest of the planner's estimate: input/output buffers
                out.ranks[rank].io_buffers += max(storage_of.get((name, rank), 0) - held, 0)
    for rm in out.ranks:
        rm.method_state, rm.values, rm.dense = emb.aux_bytes(), emb.values_bytes(), dense


def _hot_traffic(out: RatioPlan, plan, emb, traffic: Profile, batch_size: int) -> None:
    """Each rank's hot rows and expected hot lookups per step (a step: ``batch_size`` rows on every
    rank): a sharded table's rank serves every rank's lookups of the rows it holds; a data-parallel
    one serves its own batch's."""
    if not emb.keeps_hot_set or not emb.compressed:
        return
    world_size = len(out.ranks)
    per_row = traffic.top_lookups([f.name for f in emb.compressed], emb.hot_rows)  # per sample, strongest first
    places = emb.hot_row_places(per_row, world_size)
    if places is None:
        return
    name, rows = places
    per_row = per_row[: len(rows)]
    ps = next(tables[name] for tables in plan.plan.values() if name in tables)
    spec = ps.sharding_spec
    samples = batch_size if spec is None else batch_size * world_size  # the rows a rank's lookups come from
    if spec is None:  # data-parallel: every rank holds every row and serves its own batch
        shards = [(0, int(rows.max(initial=0)) + 1, r) for r in ps.ranks or range(world_size)]
    else:
        shards = [(md.shard_offsets[0], md.shard_sizes[0], md.placement.rank()) for md in spec.shards]
    for first, count, rank in shards:
        on = (rows >= first) & (rows < first + count)
        out.ranks[rank].hot_rows += int(on.sum())
        out.ranks[rank].hot_lookups += float(per_row[on].sum()) * samples
    loads = [r.hot_lookups for r in out.ranks]
    if sum(loads) > 0:
        mean = sum(loads) / world_size
        out.hot_balance = max(loads) / mean
        out.hot_balance_floor = max(1.0, float(per_row.max()) * samples / mean)
    out.hot_traffic = (f"the {traffic.name} profile's value laws: a perfect hot set's lookups, "
                       f"{batch_size:,} rows per rank per step")


def _candidates(gpus_per_node: int) -> list[int]:
    out, n = [1, 2, 4], gpus_per_node
    while n <= MAX_WORLD_SIZE:
        out.append(n)
        n *= 2
    return sorted(set(out))


def smallest_world_size(model, emb, topo: Topo, types, batch_size: int, fixed: int) -> int | None:
    """The fewest devices (1, 2, 4, then multiples of ``gpus_per_node`` doubling) the planner can place
    the tables on; None when not even ``MAX_WORLD_SIZE`` will do."""
    cap = topo.device_gb * GIB - fixed
    if cap <= 0:
        return None
    if _precheck(emb, Topo(MAX_WORLD_SIZE, topo.gpus_per_node, topo.device_gb, topo.device), types, fixed):
        return None  # a table no number of devices can hold
    total = sum(_need(t) for t in emb.tables)
    for n in _candidates(topo.gpus_per_node):
        if n * cap < total:
            continue
        planner, _ = _try_plan(model, emb, Topo(n, topo.gpus_per_node, topo.device_gb, topo.device), types,
                               batch_size, fixed)
        if planner is not None:
            return n
    return None


def plan_job(job: JobConfig, meta: DatasetMeta, topo: Topo, ratios: list[float],
             find_min: bool = True, traffic: Profile | None = None) -> list[RatioPlan]:
    from tqdm import tqdm

    # TorchRec's dry-run advice ("construct the topology via a factory") is about real jobs, not this estimate
    with quiet("torchrec", enabled=not job.ray.verbose):
        return [plan_ratio(job, meta, topo, ratio, find_min, traffic)
                for ratio in tqdm(ratios, desc="plan", unit="ratio", leave=False, disable=len(ratios) < 2)]


def _gb(n: float) -> str:
    return f"{n / GIB:,.2f}"


def input_cores(topo: Topo) -> dict[str, float]:
    """CPU cores a GPU's input path needs to keep it at one H200's training rate (reading, checking,
    collating and copying its rows: cafe_dist.train.feed, as ``bench input`` measured it)."""
    from cafe_dist.rates import H200_SAMPLES_PER_S, INPUT_ROWS_PER_CORE_S

    per_gpu = H200_SAMPLES_PER_S / INPUT_ROWS_PER_CORE_S
    return {"samples_per_s_per_gpu": H200_SAMPLES_PER_S, "rows_per_core_s": INPUT_ROWS_PER_CORE_S,
            "cores_per_gpu": per_gpu, "cores_per_node": per_gpu * topo.gpus_per_node}


def render(plans: list[RatioPlan], topo: Topo, source: str, show_ranks: int = 8, find_min: bool = True) -> str:
    lines = [f"plan for {source} on {topo.world_size} {topo.device} device(s) ({topo.gpus_per_node} per node, "
             f"{topo.device_gb:g} GiB each); GiB per rank"]
    if topo.device == "cuda":
        need = input_cores(topo)
        lines.append(f"input: {need['cores_per_gpu']:.1f} CPU core(s) per GPU ({need['cores_per_node']:.0f} per node) "
                     f"read and collate {need['samples_per_s_per_gpu'] / 1e6:.1f} M samples/s (one H200's rate) at the "
                     f"measured {need['rows_per_core_s'] / 1e6:.1f} M rows per core-second")
    for p in plans:
        smallest = ("not searched (--no-min)" if not find_min else p.min_world_size if p.min_world_size
                    else f"none up to {MAX_WORLD_SIZE}")
        head = f"\n{p.ratio:g}x ({p.method}): tables {_gb(p.table_bytes)} GiB, smallest world size that fits: {smallest}"
        lines.append(head)
        driver = (f"the driver counts every train value first ({_gb(p.driver_bytes)} GiB)" if p.driver_bytes
                  else "nothing to build on the driver")
        lines.append(f"  every rank also holds: method state {_gb(p.method_state_bytes)} GiB, lists of values "
                     f"{_gb(p.values_bytes)} GiB ({'the vocabulary' if p.method == 'full' else 'its uncompressed features'}"
                     f"); {driver}")
        if not p.fits:
            lines.append(f"  does not fit: {p.error}")
            continue
        if p.hot_balance is not None:
            lines.append(f"  hot rows: busiest rank's expected hot lookups / mean rank's = {p.hot_balance:.2f} (no "
                         f"placement of whole rows does better than {p.hot_balance_floor:.2f}; from {p.hot_traffic})")
        kinds: dict[str, int] = {}
        for t in p.tables:
            kinds[t["sharding_type"]] = kinds.get(t["sharding_type"], 0) + 1
        lines.append("  " + ", ".join(f"{n} table(s) {k}" for k, n in sorted(kinds.items())))
        hot = p.hot_balance is not None
        lines.append(f"  {'rank':>5s} {'tables':>6s} {'weights':>8s} {'optim':>7s} {'io':>7s} {'method':>7s} "
                     f"{'values':>7s} {'dense':>7s} {'total':>8s}" + (f" {'hot rows':>9s} {'hot lookups/step':>16s}"
                                                                      if hot else ""))
        busiest = sorted(p.ranks, key=lambda r: -r.total)
        for rm in sorted(busiest[:show_ranks], key=lambda r: r.rank):
            lines.append(f"  {rm.rank:>5d} {len(rm.tables):>6d} {_gb(rm.weights):>8s} {_gb(rm.optimizer):>7s} "
                         f"{_gb(rm.io_buffers):>7s} {_gb(rm.method_state):>7s} {_gb(rm.values):>7s} {_gb(rm.dense):>7s} "
                         f"{_gb(rm.total):>8s}" + (f" {rm.hot_rows:>9,d} {rm.hot_lookups:>16,.0f}" if hot else ""))
        if len(p.ranks) > show_ranks:
            lines.append(f"  ... {len(p.ranks) - show_ranks} more rank(s) (the busiest shown; --output-json has all); "
                         f"least loaded {_gb(min(r.total for r in p.ranks))} GiB")
    return "\n".join(lines)
