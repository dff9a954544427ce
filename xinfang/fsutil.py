"""Filesystem helpers: the one way files and model directories are written atomically, and text files read.

    atomic_file(path, "w"|"wb") as fh   # a temporary sibling, fsynced and renamed over `path` when the block succeeds
    atomic_write_json(path, data)       # the same for a JSON document
    write_durable(path, data)           # a new file, fsynced before it returns
    fsync_dir(directory)                # make a rename in `directory` durable
    staged_directory(out_dir, marker, kind)   # the same as atomic_file for a whole directory
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

from xinfang.errors import DataError, ModelError


def fsync_dir(directory: str | Path) -> None:
    """fsync a directory so that a rename in it survives a crash (a no-op where directories cannot be opened)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:  # pragma: no cover - some filesystems do not allow opening directories
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_durable(path: str | Path, data: bytes) -> None:
    """Write bytes to a new file (an existing one is an error) and fsync it before returning."""
    with open(path, "xb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())


@contextmanager
def atomic_file(path: str | Path, mode: str = "w") -> Iterator[IO[Any]]:
    """Write `path` all or nothing: the block writes a temporary file in the same directory ("w": UTF-8 text
    with "\\n" line ends, "wb": bytes), which is then fsynced and renamed over `path` (and the directory
    fsynced). On any error the temporary file is removed and `path` is as it was."""
    if mode not in ("w", "wb"):
        raise ValueError(f"mode must be 'w' or 'wb', got {mode!r}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with (os.fdopen(fd, "wb") if mode == "wb" else os.fdopen(fd, "w", encoding="utf-8", newline="\n")) as fh:
            yield fh
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


def atomic_write_json(path: str | Path, data: Any, indent: int | None = 2, sort_keys: bool = False) -> Path:
    """`data` as UTF-8 JSON (non-ASCII kept, a final newline), written with `atomic_file`."""
    with atomic_file(path) as fh:
        json.dump(data, fh, ensure_ascii=False, indent=indent, sort_keys=sort_keys)
        fh.write("\n")
    return Path(path)


@contextmanager
def staged_directory(out_dir: str | Path, marker: str, kind: str) -> Iterator[Path]:
    """Yield a temporary sibling of `out_dir` to fill; when the block succeeds it replaces `out_dir`.

    An existing non-empty `out_dir` without the `marker` file is not ours: ModelError, nothing touched. On any
    error the temporary directory is removed and `out_dir` stays as it was."""
    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}-", dir=out_dir.parent))
    try:
        yield tmp
        if out_dir.exists():
            if not (out_dir / marker).exists() and any(out_dir.iterdir()):
                raise ModelError(f"{out_dir}: exists and is not {kind}; refusing to overwrite it")
            shutil.rmtree(out_dir)
        tmp.rename(out_dir)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def read_text(path: str | Path, what: str) -> str:
    """A UTF-8 text file's contents; a `DataError` naming the file and `what` it should hold when unreadable."""
    try:
        return Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"{path}: cannot read {what} ({getattr(exc, 'strerror', None) or exc})") from exc


def parse_yaml(text: str, where: str, nodes: bool = False):
    """YAML text as Python data (or, with `nodes`, as a node tree that keeps line numbers); a `DataError`
    naming `where` when it is not valid YAML."""
    import yaml

    try:
        return yaml.compose(text) if nodes else yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise DataError(f"{where}: not valid YAML ({str(exc).splitlines()[0]})") from exc
