"""The errors cafe-dist reports to a user as a message (exit status 2), not a traceback."""

from __future__ import annotations


class BadInputError(ValueError):
    """Input that cannot be used: a file, dataset, row or output location; the message says which
    and what to do. Single bad lines of a conversion are recorded instead (bad_rows.tsv)."""


class DivergedError(RuntimeError):
    """Training produced a non-finite loss or metric: the weights are no longer numbers, so the run
    stops (FAILED, nothing saved or logged from that point) instead of finishing with a NaN model."""


# What the CLI prints as one sentence (exit status 2) wherever it is raised, a Ray worker included.
USER_ERRORS: tuple[type[BaseException], ...] = (BadInputError, DivergedError)


def user_error(exc: BaseException) -> BaseException | None:
    """The user-facing error behind ``exc``: itself, or the first one a Ray Train worker raised
    (``WorkerGroupError.worker_failures``, whose entries may wrap it in a ``RayTaskError`` with
    ``cause``), so a NaN in the data is the first line a user reads, not the 30th."""
    candidates = [exc, *(v for _, v in sorted((getattr(exc, "worker_failures", None) or {}).items()))]
    for e in candidates:
        for cand in (getattr(e, "cause", None), e.__cause__, e):
            if isinstance(cand, USER_ERRORS):
                return cand
    return None


def os_error_message(e: OSError) -> str:
    """An ``OSError`` as a sentence: the path, what the system said and what to do about it."""
    import errno

    where = e.filename or "a file"
    hint = {errno.ENOSPC: "free space there or choose another place",
            errno.EDQUOT: "free space there or choose another place",
            errno.EROFS: "the file system is read-only: choose another place",
            errno.EACCES: "no permission to write there: choose another place",
            errno.EPERM: "no permission to write there: choose another place",
            errno.ENOTDIR: "a part of the path is a file, not a directory"}.get(e.errno or 0, "")
    return f"{where}: {e.strerror or e}" + (f"; {hint}" if hint else "")


def disk_full(e: BaseException | None) -> bool:
    """Whether ``e`` or what it was raised from (torch.save wraps the ENOSPC of its own writes in a
    RuntimeError) is a full disk or an exceeded quota."""
    import errno

    seen = 0
    while e is not None and seen < 8:
        if getattr(e, "errno", None) in (errno.ENOSPC, errno.EDQUOT) or "No space left on device" in str(e):
            return True
        e, seen = e.__cause__ or e.__context__, seen + 1
    return False
