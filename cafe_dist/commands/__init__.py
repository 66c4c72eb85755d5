"""The ``cafe-dist`` commands: each module declares its own parsers (``register``) with their
handlers (``set_defaults(handler=...)``); :mod:`cafe_dist.cli` only assembles them and turns the
errors a user can act on into one sentence."""

from __future__ import annotations

from cafe_dist.commands import bench, compare, data, jobs, models, plan, train

MODULES = (data, train, compare, jobs, plan, models, bench)
