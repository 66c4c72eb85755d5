"""Dataset locations as pyarrow sees them: a local path, or a URI of any filesystem pyarrow reads
(``file://``, ``s3://``, ``gs://``, ``hdfs://``, ``abfs://``). Training reads ``meta.json``, lists
the Parquet files and the workers read their rows with the same location string, so a cluster can
train from shared storage or an object store without copying the data to each node."""

from __future__ import annotations

from pathlib import Path

import pyarrow.fs as pafs


def is_uri(location: str | Path) -> bool:
    return "://" in str(location)


def resolve(location: str | Path) -> str:
    """Local paths become absolute (workers may run in other directories); URIs stay as they are."""
    return str(location) if is_uri(location) else str(Path(location).resolve())


def join(location: str | Path, *parts: str) -> str:
    loc = str(location)
    return "/".join([loc.rstrip("/"), *parts]) if is_uri(loc) else str(Path(loc, *parts))


def parent(location: str | Path) -> str:
    loc = str(location).rstrip("/")
    return loc.rsplit("/", 1)[0] if is_uri(loc) else str(Path(loc).parent)


def name(location: str | Path) -> str:
    """The last part of a path or URI (a dataset directory's name)."""
    loc = str(location).rstrip("/")
    return loc.rsplit("/", 1)[-1] if is_uri(loc) else Path(loc).name


def _fs(location: str) -> tuple[pafs.FileSystem, str]:
    if is_uri(location):
        return pafs.FileSystem.from_uri(location)
    return pafs.LocalFileSystem(), str(Path(location).resolve())


def is_file(location: str | Path) -> bool:
    try:
        fs, path = _fs(str(location))
        return fs.get_file_info(path).type == pafs.FileType.File
    except (OSError, ValueError):  # unreachable store, unknown scheme: treated as absent
        return False


def read_text(location: str | Path) -> str:
    fs, path = _fs(str(location))
    with fs.open_input_stream(path) as f:
        return f.read().decode()


def list_files(directory: str | Path, suffix: str) -> list[str]:
    """Files directly under ``directory`` ending in ``suffix``, sorted, as location strings."""
    fs, path = _fs(str(directory))
    try:
        infos = fs.get_file_info(pafs.FileSelector(path, recursive=False))
    except FileNotFoundError:
        return []
    names = sorted(i.base_name for i in infos if i.type == pafs.FileType.File and i.base_name.endswith(suffix))
    return [join(directory, n) for n in names]


def open_input_file(location: str | Path):
    fs, path = _fs(str(location))
    return fs.open_input_file(path)


def read_bytes(location: str | Path) -> bytes:
    fs, path = _fs(str(location))
    with fs.open_input_stream(path) as f:
        return f.read()


def write_bytes(location: str | Path, data: bytes) -> None:
    """Write a whole file; on a local disk through a temporary name and a rename, so a reader never
    sees half of it (object stores publish an object only once it is complete)."""
    fs, path = _fs(str(location))
    parent = path.rsplit("/", 1)[0]
    fs.create_dir(parent, recursive=True)
    if isinstance(fs, pafs.LocalFileSystem):
        tmp = f"{path}.tmp"
        with open(tmp, "wb") as f:
            f.write(data)
        Path(tmp).replace(path)
    else:
        with fs.open_output_stream(path) as f:
            f.write(data)


def list_dir(directory: str | Path) -> dict[str, int | None]:
    """Entries directly under ``directory``: name → size in bytes (None for a directory); {} if absent."""
    fs, path = _fs(str(directory))
    try:
        infos = fs.get_file_info(pafs.FileSelector(path, recursive=False))
    except FileNotFoundError:
        return {}
    return {i.base_name: (None if i.type == pafs.FileType.Directory else i.size) for i in infos}


def delete(location: str | Path) -> None:
    """Remove a file or a directory tree; absent is fine."""
    fs, path = _fs(str(location))
    info = fs.get_file_info(path)
    if info.type == pafs.FileType.Directory:
        fs.delete_dir(path)
    elif info.type == pafs.FileType.File:
        fs.delete_file(path)
