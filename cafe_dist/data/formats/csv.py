"""Any delimited click log, described by a small spec (``cafe-dist data csv --spec SPEC.yaml``)::

    delimiter: ","              # default ","; fields may be quoted ("a,b")
    header: true                # column names from the first line (else give ``columns``)
    columns: [a, b, ...]        # only for header: false
    label: is_attributed        # values 0/1; or {column: NAME, positive: VALUE} (VALUE = 1, else 0)
    categorical: [ip, app, device, os, channel]
    dense: [price]              # optional: numbers, log(1 + x) as DLRM's dense preprocessing
    time: {column: click_time, features: [hour, weekday], format: "%Y-%m-%d %H:%M:%S"}  # optional

Column names are used as the header spells them, whatever characters they hold. A categorical
value is its text hashed to 32 bits (empty: missing), as Avazu's; derived time features are
categorical features named ``<column>_hour`` / ``<column>_weekday``. Columns the spec does not name
are ignored. A file without the label column is read as unlabeled (to ``predict``).
"""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from cafe_dist.data.formats.base import Block, ClickLogFormat, Layout
from cafe_dist.data.parsing import dense_transform, hash_strings32
from cafe_dist.data.schema import MISSING_ID
from cafe_dist.data.textsource import first_line
from cafe_dist.errors import BadInputError

_NUMBER = r"^[+-]?([0-9]+\.?[0-9]*|\.[0-9]+)([eE][+-]?[0-9]+)?$"


class LabelSpec(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    column: str
    positive: str | None = None  # the value meaning a click; None: the values are 0 and 1


class TimeSpec(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    column: str
    features: list[Literal["hour", "weekday"]] = Field(default_factory=lambda: ["hour", "weekday"], min_length=1)
    format: str = "%Y-%m-%d %H:%M:%S"


class CsvSpec(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    delimiter: str = Field(",", min_length=1, max_length=1)
    header: bool = True
    columns: list[str] | None = None
    label: LabelSpec | None = None
    categorical: list[str] = Field(min_length=1)
    dense: list[str] = Field(default_factory=list)
    time: TimeSpec | None = None

    @model_validator(mode="before")
    @classmethod
    def _label_shorthand(cls, data: Any) -> Any:
        if isinstance(data, dict) and isinstance(data.get("label"), str):
            data = {**data, "label": {"column": data["label"]}}
        return data

    @model_validator(mode="after")
    def _consistent(self) -> CsvSpec:
        if not self.header and not self.columns:
            raise ValueError("header: false needs columns: [names of the fields, in order]")
        named = [*self.categorical, *self.dense, *([self.time.column] if self.time else [])]
        twice = sorted({c for c in named if named.count(c) > 1})
        if twice:
            raise ValueError(f"column(s) {', '.join(twice)} named more than once among categorical, dense, time")
        if self.label and self.label.column in named:
            raise ValueError(f"the label column {self.label.column!r} is also a feature")
        return self

    @classmethod
    def load(cls, path: str | Path) -> CsvSpec:
        try:
            raw = yaml.safe_load(Path(path).read_text())
        except (OSError, yaml.YAMLError) as e:
            raise BadInputError(f"--spec {path}: cannot read it ({e})") from None
        try:
            return cls.model_validate(raw or {})
        except ValidationError as e:
            lines = [f"{'.'.join(map(str, err['loc'])) or '(top)'}: {err['msg']}" for err in e.errors()]
            raise BadInputError(f"--spec {path} is not a valid click-log spec:\n  " + "\n  ".join(lines)) from None


class Csv(ClickLogFormat):
    name = "csv"
    quote = True

    def __init__(self, spec: CsvSpec) -> None:
        self.spec = spec
        self.delimiter = spec.delimiter  # type: ignore[misc]  (an instance's own, unlike the fixed formats)

    @property
    def time_features(self) -> list[str]:
        t = self.spec.time
        return [f"{t.column}_{f}" for f in t.features] if t else []

    @property
    def dense_features(self) -> list[str]:
        return list(self.spec.dense)

    @property
    def sparse_features(self) -> list[str]:
        return [*self.spec.categorical, *self.time_features]

    def options(self) -> dict[str, Any]:
        return {"spec": self.spec.model_dump(mode="json")}

    @classmethod
    def from_options(cls, options: dict[str, Any]) -> Csv:
        return cls(CsvSpec.model_validate(options["spec"]))

    def _needed(self) -> list[str]:
        s = self.spec
        return [*s.dense, *s.categorical, *([s.time.column] if s.time else [])]

    def layout(self, path: str) -> Layout:
        s = self.spec
        if s.header:
            columns = [c.strip() for c in next(csv.reader([first_line(path)], delimiter=s.delimiter))]
        else:
            columns = list(s.columns or [])
        missing = [c for c in self._needed() if c not in columns]
        if missing:
            raise BadInputError(f"{path}: no column(s) {', '.join(map(repr, missing))} in its "
                                f"{'header' if s.header else 'spec columns'} ({', '.join(columns[:12])}"
                                f"{', ...' if len(columns) > 12 else ''}); fix the spec or the file")
        if len(set(columns)) != len(columns):
            raise BadInputError(f"{path}: the header names a column twice; names must be unique")
        labeled = s.label is not None and s.label.column in columns
        return Layout(columns, labeled, header=s.header)

    def parse_block(self, table: pa.Table, labeled: bool) -> Block:
        s, n = self.spec, table.num_rows
        checks = []
        if labeled:
            col = pc.utf8_trim_whitespace(table.column(s.label.column))
            if s.label.positive is not None:
                label = pc.equal(col, s.label.positive).to_numpy(zero_copy_only=False).astype(np.int8)
                checks.append((s.label.column, "empty label", pc.not_equal(pc.utf8_length(col), 0)
                               .to_numpy(zero_copy_only=False)))
            else:
                ok = pc.is_in(col, pa.array(["0", "1"])).to_numpy(zero_copy_only=False)
                checks.append((s.label.column, "label must be 0 or 1 (or set label.positive in the spec)", ok))
                label = (pc.equal(col, "1").to_numpy(zero_copy_only=False)).astype(np.int8)
        else:
            label = np.full(n, -1, np.int8)
        dense = np.zeros((n, len(s.dense)), np.float32)
        for j, name in enumerate(s.dense):
            text = pc.utf8_trim_whitespace(table.column(name))
            present = pc.not_equal(pc.utf8_length(text), 0).to_numpy(zero_copy_only=False)
            number = pc.match_substring_regex(text, _NUMBER).to_numpy(zero_copy_only=False)
            checks.append((name, f"not a number in {name}", number | ~present))
            values = pc.cast(pc.if_else(pa.array(number), text, "0"), pa.float64()).to_numpy(zero_copy_only=False)
            dense[:, j] = dense_transform(values, present & number)
        sparse = np.zeros((n, len(self.sparse_features)), np.int64)
        for j, name in enumerate(s.categorical):
            sparse[:, j] = hash_strings32(table.column(name))
        if s.time:
            text = table.column(s.time.column)
            ts = pc.strptime(text, format=s.time.format, unit="s", error_is_null=True)
            checks.append((s.time.column, f"time not in the format {s.time.format}",
                           pc.is_valid(ts).to_numpy(zero_copy_only=False)))
            ts = pc.fill_null(ts, pa.scalar(0, pa.timestamp("s")))
            derive = {"hour": pc.hour, "weekday": pc.day_of_week}
            for k, f in enumerate(s.time.features):
                sparse[:, len(s.categorical) + k] = derive[f](ts).to_numpy(zero_copy_only=False)
        return Block(label, dense, sparse, checks)

    def show(self, value: int) -> str:
        return "(missing)" if value == MISSING_ID else f"hash {value:08x}"

    def request_columns(self) -> list[str]:
        return self._needed()

    def example(self) -> dict[str, Any]:
        out = super().example()
        if self.spec.time:
            import datetime

            out[self.spec.time.column] = datetime.datetime(2017, 11, 7, 9, 0).strftime(self.spec.time.format)
        return out

    def numeric_columns(self) -> set[str]:
        return set(self.spec.dense)

    def request_table(self, frame) -> pa.Table:
        # a JSON number for a categorical field (an app id) means its decimal text: the log has no other form
        ints = [c for c in self.spec.categorical if frame[c].dtype.kind in "iu"]
        if ints:
            frame = frame.copy()
            for c in ints:
                frame[c] = frame[c].astype(str)
        return super().request_table(frame)
