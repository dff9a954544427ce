"""Content hashes used for manifests, fingerprints and registry checks (sha256, hex digests)."""

from __future__ import annotations

import hashlib
from pathlib import Path

_FILE_CACHE: dict[tuple[str, int, int], str] = {}


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: Path | str, cached: bool = False) -> str:
    """sha256 hex digest of a file's bytes, read in 1 MiB chunks. With `cached`, remembered per (path, size,
    modification time), for large files hashed again and again (encoder weights)."""
    if cached:
        st = Path(path).stat()
        key = (str(Path(path).resolve()), st.st_size, st.st_mtime_ns)
        if key not in _FILE_CACHE:
            _FILE_CACHE[key] = sha256_file(path)
        return _FILE_CACHE[key]
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def sha256_dir(path: Path) -> str:
    """sha256 over the relative paths and contents of every file in a directory (order-independent)."""
    h = hashlib.sha256()
    for p in sorted(q for q in path.rglob("*") if q.is_file()):
        h.update(p.relative_to(path).as_posix().encode())
        h.update(b"\0")
        h.update(sha256_file(p).encode())
    return h.hexdigest()
