"""The errors cafe-dist reports to a user as a message (exit status 2), not a traceback."""

from __future__ import annotations


class BadInputError(ValueError):
    """Input that cannot be used: a file, dataset, row or output location; the message says which
    and what to do. Single bad lines of a conversion are recorded instead (bad_rows.tsv)."""
