"""Where a dataset is written, so that a conversion can never lose data.

Every converter and the generator write into a hidden staging sibling of ``--out``
(``.<name>.partial-<host>-<pid>-<token>``), ``meta.json`` last, and only a complete dataset is
moved into place: onto a new or empty directory with one ``rename``, over an existing dataset with
one atomic exchange of the two directories (Linux ``renameat2(RENAME_EXCHANGE)``; elsewhere two
renames). So a failure at any point (bad input, disk full, Ctrl-C, SIGKILL) leaves the previous
dataset exactly as it was; a staging directory left by a killed process is removed by the next
conversion into the same place.

``--out`` is checked first: a directory that holds anything but a cafe-dist dataset is refused
(naming what is there), and replacing a dataset needs ``overwrite`` (``--overwrite``).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import logging
import os
import secrets
import shutil
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from cafe_dist.data.schema import (
    BAD_ROWS_FILE,
    META_FILE,
    SIGNATURES_DIR,
    SPLITS,
    VALUES_FILE,
    VOCAB_FILE,
    VOCABULARY_DIR,
)
from cafe_dist.errors import BadInputError, disk_full
from cafe_dist.outputs import make_dir

log = logging.getLogger(__name__)

# what a dataset directory holds (schema.py; VOCAB_FILE: the layout before raw ids); anything else in
# it was not written by cafe-dist. LMA's signatures and full's vocabularies describe the dataset's
# values: a replaced dataset takes them along (they would be stale)
DATASET_ENTRIES = frozenset({META_FILE, VALUES_FILE, VOCAB_FILE, BAD_ROWS_FILE, SIGNATURES_DIR, VOCABULARY_DIR,
                             *SPLITS})
_PARTIAL = ".partial-"
_RENAME_EXCHANGE = 2


def _describe(entries: list[str], limit: int = 6) -> str:
    shown = ", ".join(sorted(entries)[:limit])
    return shown + (f" and {len(entries) - limit} more" if len(entries) > limit else "")


def check_target(out: Path, overwrite: bool) -> bool:
    """Whether ``out`` already holds a dataset (to be replaced); :class:`BadInputError` when writing
    there could destroy something that is not ours, or a dataset without ``overwrite``."""
    if out.exists() and not out.is_dir():
        raise BadInputError(f"--out {out} is a file, not a directory; choose a directory for the dataset")
    if not out.is_dir():
        return False
    try:
        entries = [e.name for e in out.iterdir() if not (e.name.startswith(".") and _PARTIAL in e.name)]
    except PermissionError:
        raise BadInputError(f"--out {out}: cannot list it (permission denied)") from None
    if not entries:
        return False
    if META_FILE not in entries:
        raise BadInputError(
            f"--out {out} is not empty and is not a cafe-dist dataset (no {META_FILE}); it holds "
            f"{_describe(entries)}. Nothing was written: choose a new or empty directory.")
    foreign = [e for e in entries if e not in DATASET_ENTRIES]
    if foreign:
        raise BadInputError(
            f"--out {out} holds a cafe-dist dataset and files cafe-dist did not write ({_describe(foreign)}); "
            "replacing the dataset would remove them. Move them elsewhere first, or choose another --out.")
    if not overwrite:
        raise BadInputError(
            f"--out {out} already holds a dataset; pass --overwrite to replace it (the old one stays until "
            "the new one is complete), or choose another --out.")
    return True


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _remove_stale(out: Path) -> None:
    """Staging directories of killed conversions into ``out`` (this host, process gone)."""
    prefix = f".{out.name}{_PARTIAL}{socket.gethostname()}-"
    for p in out.parent.glob(f".{out.name}{_PARTIAL}*"):
        pid = p.name[len(prefix):].split("-", 1)[0] if p.name.startswith(prefix) else ""
        if pid.isdigit() and not _pid_alive(int(pid)):
            log.info("removing %s, left by a conversion that was killed", p)
            shutil.rmtree(p, ignore_errors=True)


def _exchange(a: Path, b: Path) -> bool:
    """Atomically swap two directories; False where the OS or file system cannot."""
    libc_name = ctypes.util.find_library("c")
    if not libc_name:
        return False
    libc = ctypes.CDLL(libc_name, use_errno=True)
    fn = getattr(libc, "renameat2", None)
    if fn is None:
        return False
    at_fdcwd = -100
    if fn(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.EINVAL, errno.ENOSYS, errno.ENOTSUP, errno.EOPNOTSUPP):
        return False
    raise OSError(err, os.strerror(err), str(a))


def _commit(stage: Path, out: Path, replace: bool) -> None:
    if not replace:
        if out.is_dir():
            out.rmdir()  # empty (checked); rename(2) would also replace it, but say what we mean
        stage.rename(out)
        return
    if _exchange(stage, out):
        shutil.rmtree(stage)  # now holds the old dataset
        return
    old = out.with_name(f".{out.name}{_PARTIAL}old-{secrets.token_hex(4)}")
    out.rename(old)
    stage.rename(out)
    shutil.rmtree(old)


def check_free_space(out: str | Path, need: int, what: str) -> None:
    """Refuse at once a write that cannot fit the file system of ``out`` (``need``: bytes, an
    estimate), rather than failing with a full disk after hours."""
    probe = Path(out).absolute()
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    free = shutil.disk_usage(probe).free
    if need > free:
        raise BadInputError(f"{what} needs about {need / 1e9:,.1f} GB while writing and {probe} has {free / 1e9:,.1f} "
                            "GB free; ask for fewer rows or choose another --out")


@contextmanager
def staged_dataset(out_dir: str | Path, overwrite: bool = False) -> Iterator[Path]:
    """Yield a fresh staging directory; on a clean exit move it to ``out_dir`` (the caller wrote
    ``meta.json`` last), on any exception remove it and leave ``out_dir`` untouched."""
    out = Path(out_dir).absolute()
    replace = check_target(out, overwrite)
    make_dir(out.parent, out, "--out")  # (the staging directory below is the write test)
    _remove_stale(out)
    stage = out.with_name(f".{out.name}{_PARTIAL}{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(4)}")
    try:
        stage.mkdir()
    except PermissionError:
        raise BadInputError(f"--out {out}: cannot write in {out.parent} (permission denied)") from None
    except OSError as e:
        raise BadInputError(f"--out {out}: cannot write in {out.parent}: {e.strerror or e}") from None
    kept = "the previous dataset there is intact" if replace else "nothing was written there"
    try:
        yield stage
        if not (stage / META_FILE).is_file():
            raise RuntimeError(f"internal: {stage} has no {META_FILE}; not moving an incomplete dataset")
        _commit(stage, out, replace)
    except BaseException as e:
        shutil.rmtree(stage, ignore_errors=True)
        if disk_full(e):
            raise BadInputError(f"disk full while writing the dataset for {out} (in {stage.name}): {e}. The "
                                f"partial output was removed and {kept}; free space or choose another --out."
                                ) from None
        if isinstance(e, OSError) and not isinstance(e, FileNotFoundError):
            raise BadInputError(f"cannot write the dataset for {out}: {e}. The partial output was removed and "
                                f"{kept}.") from None
        raise
