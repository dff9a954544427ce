"""Filesystem helpers shared by everything that writes model directories."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from xinfang.errors import DataError, ModelError


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
