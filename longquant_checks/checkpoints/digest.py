"""Content digests of weight files, read once: cached by file identity so a 100 GB checkpoint is hashed once.

A digest names its algorithm ("blake3:<hex>"), so a later change of algorithm never matches an old one. The
cache holds one small JSON entry per resolved path under <longquant cache>/digests/, valid while the file's
size, mtime_ns, ctime_ns, inode and device are unchanged. A normal write (in place, or a new file renamed
over the old) changes mtime or the inode; ctime also catches an in-place edit whose mtime was put back with
os.utime (utime cannot set ctime). Out of scope: a changed system clock, or raw writes under the filesystem.
A file changed in the last second is hashed but not cached: where timestamps are coarse (older kernels, NFS),
a second write within the same tick would keep the stamp (git's "racy clean" problem).
Entries are written atomically under a per-entry file lock (two processes never hash the same file at once;
the second waits and takes the first one's digest); an unreadable or corrupt entry is recomputed.
See docs/identity.md for the choice of hash and its measured speed.
"""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path

import blake3
from filelock import FileLock

from ..storage import cache_dir, write_text_atomic

ALGORITHM = "blake3"
_CHUNK = 4 << 20  # 2-4 MiB read fastest here (bench/hash_speed.py --chunk): the buffer stays in cache
_SETTLE_NS = 1_000_000_000


def hash_file(path: str | Path) -> str:
    """'blake3:<hex>' of the file's full bytes, read now (no cache)."""
    h = blake3.blake3()
    buf = bytearray(_CHUNK)
    view = memoryview(buf)
    # Streamed rather than blake3's update_mmap: a file truncated while mapped would kill the process (SIGBUS).
    with open(path, "rb", buffering=0) as fh:
        while n := fh.readinto(buf):
            h.update(view[:n])
    return f"{ALGORITHM}:{h.hexdigest()}"


def _stamp(path: Path) -> dict[str, int]:
    st = path.stat()
    return {"size": st.st_size, "mtime_ns": st.st_mtime_ns, "ctime_ns": st.st_ctime_ns,
            "inode": st.st_ino, "device": st.st_dev}


def _entry(path: Path) -> Path:
    return cache_dir("digests") / f"{hashlib.sha256(str(path).encode()).hexdigest()[:32]}.json"


def _cached(entry: Path, path: Path, stamp: dict[str, int]) -> str | None:
    try:
        data = json.loads(entry.read_text(encoding="utf-8"))
        digest = data["digest"]
        ok = data["path"] == str(path) and all(data[k] == v for k, v in stamp.items())
    except (OSError, ValueError, KeyError, TypeError):  # missing, unreadable or corrupt: recompute
        return None
    return digest if ok and isinstance(digest, str) and digest.startswith(ALGORITHM + ":") else None


def file_digest(path: str | Path) -> str:
    """The file's content digest, from the cache while the file is unchanged, else hashed and cached."""
    path = Path(path).resolve()  # a hub snapshot's symlink and its blob share one entry
    stamp = _stamp(path)
    entry = _entry(path)
    if digest := _cached(entry, path, stamp):
        return digest
    with FileLock(str(entry) + ".lock"):
        if digest := _cached(entry, path, stamp):  # another process hashed it while we waited
            return digest
        digest = hash_file(path)
        settled = time.time_ns() - max(stamp["mtime_ns"], stamp["ctime_ns"]) > _SETTLE_NS
        if settled and _stamp(path) == stamp:  # changed while we read it: the digest may mix old and new bytes
            write_text_atomic(entry, json.dumps({"path": str(path), **stamp, "digest": digest}, sort_keys=True))
    return digest
