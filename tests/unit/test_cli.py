"""The command line's own conventions."""

from __future__ import annotations

import pytest

from cafe_dist import __version__
from cafe_dist.cli import main


def test_version_prints_the_package_version(capsys):
    with pytest.raises(SystemExit) as e:
        main(["--version"])
    assert e.value.code == 0 and capsys.readouterr().out.strip() == f"cafe-dist {__version__}"
