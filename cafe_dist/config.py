"""Job configuration: YAML + ``--set key=value`` overrides, validated by frozen pydantic models.

Unknown keys and bad values are errors that name the dotted key, so a typo never silently falls
back to a default.
"""

from __future__ import annotations

import difflib
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator


class ConfigError(ValueError):
    """A configuration problem; the message names the key and what to do."""


class _Section(BaseModel):
    # inf and nan pass ``gt=0`` (inf > 0): a learning rate of inf trained a NaN model to the end
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


class SynthConfig(_Section):
    """Parameters for generating ``data.path`` on first use when it does not exist."""

    rows: int = Field(200_000, gt=0)
    seed: int = 0
    cardinality_scale: float = Field(0.01, gt=0)
    zipf_a: float = Field(1.1, gt=1.0)
    drift_period: int = Field(0, ge=0)
    drift_fraction: float = Field(0.05, ge=0, le=1)
    test_fraction: float = Field(1 / 7, ge=0, lt=1)
    profile: str | None = None  # a fitted feature profile (criteo-kaggle, criteo-tb or a JSON file)


class DataConfig(_Section):
    path: str
    synthetic: SynthConfig | None = None
    # the published profile the data follows (criteo-kaggle, criteo-tb): what `cafe-dist plan` sizes
    # the cluster for where the data is not (yet) at ``path``
    profile: Literal["criteo-kaggle", "criteo-tb"] | None = None


class EmbeddingConfig(_Section):
    method: str = "full"
    dim: int = Field(16, gt=0, multiple_of=4)  # fbgemm kernels need multiples of 4
    compression_ratio: float = Field(1.0, ge=1.0)

    @model_validator(mode="after")
    def _known_method(self) -> EmbeddingConfig:
        from cafe_dist.embeddings.registry import REGISTRY  # the methods (and torch) load when needed

        if self.method not in REGISTRY:
            raise ValueError(f"unknown method {self.method!r}; choose one of {', '.join(REGISTRY)}")
        return self


class MLflowConfig(_Section):
    enabled: bool = True
    tracking_uri: str | None = None  # None: $MLFLOW_TRACKING_URI, else sqlite:///mlflow.db
    experiment: str = "cafe-dist"
    run_tags: dict[str, str] = Field(default_factory=dict)  # extra tags on the run (a sweep adds sweep=NAME)
    log_model: bool = True  # log the finished run's model (pyfunc, `model/`); needs checkpoint.at_end
    register_model: str | None = None  # also register it under this name in the model registry


class ModelConfig(_Section):
    dense_arch: list[int] = Field(default_factory=lambda: [64])  # embedding.dim is appended
    over_arch: list[int] = Field(default_factory=lambda: [64, 32])  # the final 1 is appended


class TrainConfig(_Section):
    batch_size: int = Field(512, gt=0)
    eval_batch_size: int = Field(4096, gt=0)
    epochs: int = Field(1, gt=0)
    max_steps: int | None = Field(None, gt=0)
    lr: float = Field(0.05, gt=0)  # dense optimizer (Adagrad)
    embedding_lr: float | None = Field(None, gt=0)  # fused sparse optimizer; None = lr
    seed: int = 0
    log_every: int = Field(50, gt=0)
    eval_every: int | None = Field(None, gt=0)  # steps between test-set evaluations; None: at the end only
    target_auc: float | None = Field(None, gt=0.5, lt=1)  # stop at the first evaluation reaching it
    # TorchRec's TrainPipelineSparseDist (overlaps the next batch's copy and input all-to-all with
    # this step): auto = on GPU workers; on = also on CPU (the same results, no overlap: for tests);
    # off = the plain loop. Methods that cannot remap a batch ahead (mch) always use the plain loop.
    pipeline: Literal["auto", "on", "off"] = "auto"

    @field_validator("pipeline", mode="before")
    @classmethod
    def _yaml_on_off(cls, v: Any) -> Any:
        """YAML reads a bare on/off as true/false."""
        return {True: "on", False: "off"}.get(v, v) if isinstance(v, bool) else v

    @model_validator(mode="after")
    def _target_needs_evals(self) -> TrainConfig:
        if self.target_auc is not None and self.eval_every is None:
            raise ValueError("train.target_auc is checked at evaluations: set train.eval_every too")
        return self


class RayConfig(_Section):
    num_workers: int = Field(1, gt=0)
    address: str | None = None
    use_gpu: bool = False
    cpus_per_worker: float = Field(1.0, gt=0)
    sharding_types: list[Literal["table_wise", "column_wise", "table_column_wise", "row_wise",
                                 "data_parallel"]] | None = None
    storage_path: str = "runs"  # Ray Train storage: checkpoints land in <storage_path>/<name>/
    name: str | None = None  # re-running the same name with the same storage_path resumes
    # auto: resume a named run only if its checkpoint was made with the same settings (see
    # cafe_dist.resume); force: continue it even when train.* settings changed
    resume: Literal["auto", "force"] = "auto"
    max_failures: int = Field(0, ge=-1)  # worker-group restarts from the latest checkpoint (-1: no limit)
    # a checkpoint resumes on any number of workers: the rows of the epoch no rank had trained are
    # dealt to the new workers (cafe_dist.train.row_order, cafe_dist.train.elastic)
    elastic: bool = False
    # an elastic run resumed on another number of workers: "global" keeps its rows per step over all
    # workers (each takes global / num_workers, rounded), so the run goes on with the same steps and
    # optimiser dynamics; "per_worker" keeps train.batch_size per worker (larger or smaller steps)
    elastic_batch: Literal["global", "per_worker"] = "global"
    # show the libraries' own logs (Ray Data and Train, TorchRec's planner, fbgemm) and warnings
    verbose: bool = False


class CheckpointConfig(_Section):
    """What survives a crash: see cafe_dist.checkpoint_dirs."""

    every_steps: int | None = Field(None, gt=0)  # None: only at the end
    at_end: bool = True  # a full checkpoint after the last step (a re-run of the name resumes there)
    keep: int = Field(3, ge=1)  # newest checkpoints kept (Ray's CheckpointConfig.num_to_keep)


class FaultConfig(_Section):
    """Fault injection for tests and drills; each fault fires once per run (a marker file says so)."""

    kill_worker_at_step: int | None = Field(None, gt=0)  # SIGKILL the last rank's process after this step
    kill_coordinator_at_step: int | None = Field(None, gt=0)  # ray.kill the coordinator actor (it restarts)


class SweepConfig(_Section):
    """The grid ``cafe-dist sweep`` runs when --methods / --ratios are not given."""

    methods: list[str] = Field(default_factory=list)  # --methods overrides
    ratios: list[float] = Field(default_factory=list)  # --ratios overrides
    name: str | None = None  # MLflow tag sweep=NAME on every run; None: sweep-<timestamp>
    seeds: list[int] = Field(default_factory=list)  # --seeds overrides; each cell once per seed ([]: train.seed)
    concurrency: int | None = Field(None, gt=0)  # --concurrency overrides; None: as many cells as the cluster holds

    @model_validator(mode="after")
    def _known(self) -> SweepConfig:
        from cafe_dist.embeddings.registry import REGISTRY

        bad = [m for m in self.methods if m not in REGISTRY]
        if bad:
            raise ValueError(f"unknown method(s) {', '.join(bad)}; choose from {', '.join(REGISTRY)}")
        if any(r < 1 for r in self.ratios):
            raise ValueError("every compression ratio must be >= 1")
        return self


class JobConfig(_Section):
    """A job. Besides the sections below it has one section per method with settings (``cafe``,
    ``qr``, ``robe``, ``mch``, ...), declared by the method itself (``CompressedEmbedding.options``)
    and filled with its defaults when absent; they are read as attributes (``job.cafe.threshold``)."""

    model_config = ConfigDict(extra="allow", frozen=True, allow_inf_nan=False)  # the extras are exactly the method sections

    data: DataConfig
    embedding: EmbeddingConfig = EmbeddingConfig()
    model: ModelConfig = ModelConfig()
    train: TrainConfig = TrainConfig()
    ray: RayConfig = RayConfig()
    mlflow: MLflowConfig = MLflowConfig()
    checkpoint: CheckpointConfig = CheckpointConfig()
    fault: FaultConfig = FaultConfig()
    sweep: SweepConfig | None = None

    @model_validator(mode="wrap")
    @classmethod
    def _method_sections(cls, data: Any, handler: Any) -> JobConfig:
        """Validate each method settings section with its method's model (errors keep the dotted
        key); any other unknown section is an error, as everywhere."""
        if not isinstance(data, dict):
            return handler(data)
        from pydantic_core import InitErrorDetails

        from cafe_dist.embeddings.registry import sections

        known = sections()
        data, errors = dict(data), []
        for key in [k for k in data if k not in cls.model_fields]:
            model = known.get(key)
            if model is None:
                errors.append(InitErrorDetails(type="extra_forbidden", loc=(key,), input=data[key]))
                continue
            try:
                data[key] = model.model_validate(data[key] if data[key] is not None else {})
            except ValidationError as e:
                errors += [InitErrorDetails(type=err["type"], loc=(key, *err["loc"]), input=err["input"],
                                            ctx=err.get("ctx", {})) for err in e.errors()]
        if errors:
            raise ValidationError.from_exception_data(cls.__name__, errors)
        for key, model in known.items():
            if key not in data:
                data[key] = model()
        return handler(data)

    @model_validator(mode="after")
    def _faults_need_recovery(self) -> JobConfig:
        if self.fault.kill_worker_at_step is not None and self.ray.max_failures == 0:
            raise ValueError("fault.kill_worker_at_step needs ray.max_failures >= 1 (else the run just fails)")
        if self.fault.kill_coordinator_at_step is not None:
            from cafe_dist.embeddings.registry import REGISTRY

            if REGISTRY[self.embedding.method].service is None:
                having = ", ".join(m for m, cls in REGISTRY.items() if cls.service is not None)
                raise ValueError(f"fault.kill_coordinator_at_step needs a method with a coordinator ({having}), "
                                 f"not {self.embedding.method}")
        return self

    def flat(self) -> dict[str, Any]:
        return flatten(self.model_dump())

    def run_params(self, resolved: dict[str, Any] | None = None) -> dict[str, Any]:
        """What a run logs as its MLflow params: every setting but the other methods' sections, the
        method's own with ``resolved`` (the values it derived for the settings the job left unset; None:
        a setting the method does not use)."""
        from cafe_dist.embeddings.registry import section_of, sections

        own = section_of(self.embedding.method)
        others = set(sections()) - {own}
        params = {k: v for k, v in self.flat().items() if k.split(".", 1)[0] not in others}
        for k, v in (resolved or {}).items():
            if v is None:
                params.pop(f"{own}.{k}", None)
            else:
                params[f"{own}.{k}"] = v
        return params

    def method_options(self) -> Any:
        """The settings section of ``embedding.method`` (its options model), or None."""
        from cafe_dist.embeddings.registry import section_of

        name = section_of(self.embedding.method)
        return getattr(self, name) if name is not None else None


def flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(flatten(v, key + "."))
        else:
            out[key] = v
    return out


def _known_keys(model: type[BaseModel], prefix: str = "") -> list[str]:
    keys = []
    if model is JobConfig:
        from cafe_dist.embeddings.registry import sections

        for name, section in sections().items():
            keys += [name, *_known_keys(section, name + ".")]
    for name, field in model.model_fields.items():
        keys.append(prefix + name)
        ann = field.annotation
        for cand in (ann, *getattr(ann, "__args__", ())):
            if isinstance(cand, type) and issubclass(cand, BaseModel):
                keys += _known_keys(cand, prefix + name + ".")
    return keys


def apply_override(raw: dict[str, Any], assignment: str) -> None:
    """Apply one ``a.b.c=value`` (value parsed as YAML) to a nested dict in place."""
    if "=" not in assignment:
        raise ConfigError(f"--set {assignment!r}: expected key=value, e.g. --set train.batch_size=1024")
    key, _, text = assignment.partition("=")
    key = key.strip()
    try:
        value = yaml.safe_load(text) if text.strip() else None
    except yaml.YAMLError as e:
        raise ConfigError(f"--set {key}: cannot parse value {text!r}: {e}") from None
    node = raw
    parts = key.split(".")
    for p in parts[:-1]:
        nxt = node.setdefault(p, {})
        if not isinstance(nxt, dict):
            raise ConfigError(f"--set {key}: {p!r} is a value, not a section")
        node = nxt
    node[parts[-1]] = value


def _format_error(e: ValidationError) -> str:
    lines = []
    known = _known_keys(JobConfig)
    for err in e.errors():
        key = ".".join(str(p) for p in err["loc"] if not isinstance(p, int) or True)
        if err["type"] == "extra_forbidden":
            hint = difflib.get_close_matches(key, known, n=1)
            lines.append(f"config key '{key}' is not a known key"
                         + (f" (did you mean '{hint[0]}'?)" if hint else ""))
        elif err["type"] == "missing":
            lines.append(f"config key '{key}' is required")
        else:
            value = err.get("input")
            lines.append(f"config key '{key}': {err['msg']} (got {value!r})")
    return "invalid configuration:\n  " + "\n  ".join(lines)


def load_config(path: str | Path | None, overrides: list[str] | None = None,
                base: dict[str, Any] | None = None) -> JobConfig:
    raw: dict[str, Any] = dict(base or {})
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise ConfigError(f"config file not found: {p}")
        try:
            loaded = yaml.safe_load(p.read_text()) or {}
        except yaml.YAMLError as e:
            raise ConfigError(f"{p}: not valid YAML: {e}") from None
        if not isinstance(loaded, dict):
            raise ConfigError(f"{p}: the top level must be a mapping of sections (data, train, ...)")
        raw.update(loaded)
    for o in overrides or []:
        apply_override(raw, o)
    try:
        return JobConfig.model_validate(raw)
    except ValidationError as e:
        raise ConfigError(_format_error(e)) from None
