"""libsvm / libfm / libffm lines: ``label idx:val idx:val ...`` separated by single spaces (labels
-1, 0, +1 or 1). The k-th pair of a line is field k, named ``F<k>`` (libfm's layout, as in the Frappe
and MovieLens benchmarks of the FM literature); with three parts, ``field:idx:val`` (libffm), the
field is named ``F<field>`` and every line must list the first line's fields in its order. A
field's categorical value is ``idx`` (below 2**32); ``val`` must be a number and is not used (these
logs give 1 for a present one-hot feature). ``cafe-dist data libsvm`` reads the field count from the
first line; a line with another count is a bad row."""

from __future__ import annotations

from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from cafe_dist.data.formats.base import Block, ClickLogFormat, Layout, _request_text
from cafe_dist.data.textsource import first_line
from cafe_dist.errors import BadInputError

_VALUE = r"[+-]?([0-9]+\.?[0-9]*|\.[0-9]+)([eE][+-]?[0-9]+)?"
_LABELS = {"-1": 0, "0": 0, "1": 1, "+1": 1}


class LibSVM(ClickLogFormat):
    name = "libsvm"
    delimiter = " "

    def __init__(self, fields: list[int] | None = None, ffm: bool = False) -> None:
        """``fields``: libffm's field numbers (libfm: 1..K by position); None until a file is read."""
        self.fields, self.ffm = fields, ffm

    @property
    def dense_features(self) -> list[str]:
        return []

    @property
    def sparse_features(self) -> list[str]:
        if self.fields is None:
            raise BadInputError("the libsvm layout is read from the first input line; none was read yet")
        return [f"F{f}" for f in self.fields]

    def options(self) -> dict[str, Any]:
        return {"fields": self.fields, "ffm": self.ffm}

    @classmethod
    def from_options(cls, options: dict[str, Any]) -> LibSVM:
        return cls(list(options["fields"]), bool(options["ffm"]))

    def layout(self, path: str) -> Layout:
        line = first_line(path)
        tokens = line.strip().split(" ")
        if len(tokens) < 2 or tokens[0] not in _LABELS or any(t.count(":") not in (1, 2) for t in tokens[1:]):
            raise BadInputError(f"{path}: the first line {line[:80]!r} is not 'label idx:val ...' (libsvm/libfm) nor "
                                "'label field:idx:val ...' (libffm) with single spaces; labels are -1, 0, +1 or 1")
        ffm = tokens[1].count(":") == 2
        try:
            fields = [int(t.split(":")[0]) for t in tokens[1:]] if ffm else list(range(1, len(tokens)))
        except ValueError:
            raise BadInputError(f"{path}: libffm field numbers must be integers: {line[:80]!r}") from None
        if self.fields is None:
            self.fields, self.ffm = fields, ffm
        elif (fields, ffm) != (self.fields, self.ffm):
            raise BadInputError(f"{path}: its fields ({len(fields)}{', libffm' if ffm else ''}) differ from the first "
                                f"input's ({len(self.fields)}{', libffm' if self.ffm else ''})")
        if len(set(fields)) != len(fields):
            raise BadInputError(f"{path}: a field appears twice in the first line")
        trailing = ["(end)"] if line.endswith(" ") else []  # a trailing space is one more (empty) field
        return Layout(["label", *self.sparse_features, *trailing], labeled=True)

    def parse_block(self, table: pa.Table, labeled: bool) -> Block:
        n = table.num_rows
        checks = []
        if labeled:
            col = table.column("label")
            ok = pc.is_in(col, pa.array(list(_LABELS))).to_numpy(zero_copy_only=False)
            checks.append(("label", "label must be -1, 0, +1 or 1", ok))
            label = pc.is_in(col, pa.array(["1", "+1"])).to_numpy(zero_copy_only=False).astype(np.int8)
        else:
            label = np.full(n, -1, np.int8)
        sparse = np.zeros((n, len(self.fields)), np.int64)
        for j, (field, name) in enumerate(zip(self.fields, self.sparse_features)):
            col = table.column(name)
            head = f"^{field}:" if self.ffm else "^"
            ok = pc.match_substring_regex(col, f"{head}[0-9]{{1,10}}:{_VALUE}$").to_numpy(zero_copy_only=False)
            idx_text = pc.if_else(pa.array(ok), pc.struct_field(pc.extract_regex(col, f"{head}(?P<i>[0-9]+):"), "i"), "0")
            idx = pc.cast(idx_text, pa.int64()).to_numpy(zero_copy_only=False)
            ok &= idx < 2**32
            what = f"field {field}:idx:val" if self.ffm else "idx:val"
            checks.append((name, f"not {what} (idx below 2**32) in {name}", ok))
            sparse[:, j] = np.where(ok, idx, 0)
        if "(end)" in table.column_names:
            checks.append(("(end)", "text after the last field", pc.equal(table.column("(end)"), "")
                           .to_numpy(zero_copy_only=False)))
        return Block(label, np.zeros((n, 0), np.float32), sparse, checks)

    def show(self, value: int) -> str:
        return f"idx {value}"

    def numeric_columns(self) -> set[str]:
        return set(self.sparse_features)

    def request_table(self, frame) -> pa.Table:
        """A request sends each field's ``idx`` as a number (column ``F<k>``); it becomes the token
        a line would hold (``idx:1``, or ``field:idx:1``)."""
        cols = {}
        for field, name in zip(self.fields, self.sparse_features):
            text = _request_text(frame[name], name, numeric=True)
            parts = ([pa.scalar(str(field))] if self.ffm else []) + [text, pa.scalar("1")]
            cols[name] = pc.binary_join_element_wise(*parts, ":")
        return pa.table(cols)
