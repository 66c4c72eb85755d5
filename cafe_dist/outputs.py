"""Files a command writes (``predict --out``, ``--output-json``, ``export --out``): checked before
any work, so a read-only disk or a path under a file is said at once rather than after an hour's
scoring, never written over an input or an existing file without ``--overwrite``, and published
with one rename from a temporary file beside them, so a failure leaves no half-written output.
(Datasets have their own, directory-sized version of this: :mod:`cafe_dist.data.target`.)"""

from __future__ import annotations

import contextlib
import errno
import os
import secrets
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path

from cafe_dist.errors import BadInputError, disk_full


def make_dir(parent: Path, path: Path, flag: str) -> None:
    """Create ``parent`` (where ``path``, given as ``flag``, goes) if needed; a part of it that is a
    file, or no permission, is said as a sentence."""
    try:
        parent.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError):
        raise BadInputError(f"{flag} {path}: a part of its parent path is a file, not a directory; choose "
                            "another path") from None
    except OSError as e:
        raise BadInputError(f"{flag} {path}: cannot create {parent}: {e.strerror or e}; choose another path") from None


def _writable_dir(parent: Path, path: Path, flag: str) -> None:
    """:func:`make_dir`, then prove a file can be made there (root ignores mode bits, a read-only
    mount does not: only trying says)."""
    make_dir(parent, path, flag)
    try:
        fd, probe = tempfile.mkstemp(prefix=".cafe-dist-probe-", dir=parent)
    except OSError as e:
        why = "read-only file system" if e.errno == errno.EROFS else (e.strerror or str(e))
        raise BadInputError(f"{flag} {path}: cannot write in {parent} ({why}); choose another path") from None
    os.close(fd)
    os.unlink(probe)


def _same(a: Path, b: Path) -> bool:
    try:
        return a.resolve() == b.resolve() or (a.exists() and b.exists() and os.path.samefile(a, b))
    except OSError:
        return False


def check_file(path: str | Path, *, flag: str, overwrite: bool | None = None,
               inputs: Iterable[str | Path] = ()) -> Path:
    """Refuse writing ``path`` when it is (or lies inside) one of ``inputs`` (always), is a
    directory, or exists and ``overwrite`` is False (``None``: the command replaces its own output
    files, e.g. ``--output-json``); then check its directory is writable. Returns the path."""
    out = Path(path)
    for src in inputs:
        src = Path(src)
        if _same(out, src) or (src.is_dir() and out.resolve().is_relative_to(src.resolve())):
            raise BadInputError(f"{flag} {out} is the input ({src}) or inside it; writing there would destroy what "
                                "is being read. Choose another path.")
    if out.is_dir():
        raise BadInputError(f"{flag} {out} is a directory; give a file path")
    if out.exists() and overwrite is False:
        raise BadInputError(f"{flag} {out} exists; pass --overwrite to replace it, or choose another path")
    _writable_dir(out.parent, out, flag)
    return out


def check_new_dir(path: str | Path, *, flag: str) -> Path:
    """A directory a command creates whole (``export --out``): it must not exist yet, and its
    parent must be writable."""
    out = Path(path)
    if out.exists():
        what = "a directory" if out.is_dir() else "a file"
        raise BadInputError(f"{flag} {out} exists ({what}); this writes a new directory: remove it or choose "
                            "another path")
    _writable_dir(out.parent, out, flag)
    return out


def check_dir(path: str | Path, *, flag: str) -> Path:
    """A directory a command writes into (``ray.storage_path``): created if missing, and proven
    writable now rather than when the first checkpoint is due."""
    d = Path(path)
    if d.exists() and not d.is_dir():
        raise BadInputError(f"{flag} {d} is a file; it must be a directory (or a path where one can be made)")
    _writable_dir(d, d, flag)
    return d


@contextlib.contextmanager
def replaced_on_success(path: str | Path) -> Iterator[Path]:
    """A temporary path beside ``path`` to write; renamed onto ``path`` when the block ends
    cleanly, removed when it raises (a full disk names the output)."""
    out = Path(path)
    tmp = out.with_name(f".{out.name}.tmp-{secrets.token_hex(4)}")
    try:
        yield tmp
        os.replace(tmp, out)
    except BaseException as e:
        with contextlib.suppress(OSError):
            tmp.unlink()
        if disk_full(e):
            raise BadInputError(f"disk full while writing {out}; nothing was written there (free space or choose "
                                "another path)") from None
        raise


def write_text(path: str | Path, text: str) -> None:
    """``path`` holds ``text`` afterwards, or is as it was."""
    with replaced_on_success(path) as tmp:
        tmp.write_text(text)
