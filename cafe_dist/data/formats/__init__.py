"""Click-log formats as plugins: each one file (its column layout, its block parser used by both
conversion and serving, and how a raw value is shown). ``meta.json`` records the format and its
options, so whatever reads a dataset's raw rows later (``evaluate``/``predict`` of a raw file, the
served model, ``hot``) parses them as its conversion did: :func:`format_of`."""

from __future__ import annotations

from cafe_dist.data.formats.avazu import Avazu
from cafe_dist.data.formats.base import Block, ClickLogFormat, Layout
from cafe_dist.data.formats.criteo import Criteo
from cafe_dist.data.formats.csv import Csv, CsvSpec
from cafe_dist.data.formats.libsvm import LibSVM
from cafe_dist.data.schema import DatasetMeta
from cafe_dist.errors import BadInputError

FORMATS: dict[str, type[ClickLogFormat]] = {"criteo": Criteo, "avazu": Avazu, "csv": Csv, "libsvm": LibSVM}
# generated data has Criteo's layout: its raw rows are Criteo lines
ALIASES = {"synth": "criteo"}


def format_of(meta: DatasetMeta) -> ClickLogFormat:
    """The format a dataset was converted from, with the options it was converted with."""
    name = ALIASES.get(meta.format, meta.format)
    if name not in FORMATS:
        raise BadInputError(f"this dataset's format {meta.format!r} is not one cafe-dist reads raw rows of "
                            f"({', '.join(FORMATS)}); score its converted splits instead")
    return FORMATS[name].from_options(meta.extra.get("format_options") or {})


__all__ = ["FORMATS", "Block", "ClickLogFormat", "Csv", "CsvSpec", "Layout", "LibSVM", "format_of"]
