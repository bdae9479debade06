"""How fast can a checkpoint's weight files be hashed? (a benchmark, not a test; figures in docs/identity.md)

Writes a file of random bytes (--size GiB, default 1.5) once, reads it once to warm the page cache, then
times each available candidate over it, best of --repeat runs:

  sha256 / blake2b      hashlib (OpenSSL; sha256 uses the CPU's SHA extensions where it has them),
                        streamed in --chunk MiB reads into a reused buffer
  blake3                the `blake3` package, streamed the same way, single-threaded
  blake3 Nt             the same with max_threads=AUTO: each chunk's update() is split over the cores
  blake3 mmap 1t / Nt   blake3's own `update_mmap(path)`, one thread, then blake3.AUTO threads
  xxh3_128              the `xxhash` package (non-cryptographic), streamed

The page cache is warm, so this is the hash's speed, not the disk's: a cold first read of a large checkpoint
is bounded by the disk as well. Last, the cost of a cached lookup: `file_digest` of
longquant_checks/checkpoints/digest.py on the same file when its digest is already cached (stat + one small
JSON read), in microseconds.

Usage (from the repository root):
  .venv/bin/python bench/hash_speed.py                 # 1.5 GiB file in $TMPDIR, 4 MiB chunks, best of 3
  .venv/bin/python bench/hash_speed.py --size 1 --chunk 8 --repeat 5 --dir /some/disk
  OPENSSL_ia32cap=":~0x20000000" .venv/bin/python bench/hash_speed.py   # as on a CPU without SHA extensions
                                                     # (masks CPUID.7:EBX bit 29 from OpenSSL)
"""

from __future__ import annotations

import argparse
import hashlib
import os
import platform
import tempfile
import time
from pathlib import Path


def streamed(make, path: Path, chunk: int) -> str:
    h = make()
    buf = bytearray(chunk)
    view = memoryview(buf)
    with open(path, "rb", buffering=0) as fh:
        while n := fh.readinto(buf):
            h.update(view[:n])
    return h.hexdigest()


def candidates(chunk: int) -> dict:
    out = {"sha256": lambda p: streamed(hashlib.sha256, p, chunk),
           "blake2b": lambda p: streamed(hashlib.blake2b, p, chunk)}
    try:
        import blake3

        out["blake3"] = lambda p: streamed(blake3.blake3, p, chunk)
        # max_threads: blake3 splits each large update() over threads (no mmap needed)
        out[f"blake3 {os.cpu_count()}t"] = lambda p: streamed(lambda: blake3.blake3(max_threads=blake3.blake3.AUTO),
                                                            p, chunk)
        out["blake3 mmap 1t"] = lambda p: blake3.blake3().update_mmap(p).hexdigest()
        out[f"blake3 mmap {os.cpu_count()}t"] = lambda p: blake3.blake3(max_threads=blake3.blake3.AUTO) \
            .update_mmap(p).hexdigest()
    except ImportError:
        print("blake3 not installed (pip install blake3): skipped")
    try:
        import xxhash

        out["xxh3_128"] = lambda p: streamed(xxhash.xxh3_128, p, chunk)
    except ImportError:
        print("xxhash not installed (pip install xxhash): skipped")
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=float, default=1.5, help="file size in GiB")
    ap.add_argument("--chunk", type=int, default=4, help="read size in MiB")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--dir", default=None, help="where to write the test file (default: $TMPDIR)")
    args = ap.parse_args()
    size = int(args.size * 2**30)
    print(f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, {platform.python_version()}, "
          f"{args.size} GiB file, {args.chunk} MiB chunks, best of {args.repeat}")
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        path = Path(tmp, "weights.safetensors")
        with open(path, "wb") as fh:
            block = os.urandom(64 << 20)
            for _ in range(size // len(block)):
                fh.write(block)
            fh.write(block[: size % len(block)])
        streamed(hashlib.md5, path, args.chunk << 20)  # warm the page cache
        for name, fn in candidates(args.chunk << 20).items():
            best = float("inf")
            for _ in range(args.repeat):
                start = time.perf_counter()
                fn(path)
                best = min(best, time.perf_counter() - start)
            print(f"  {name:<16} {size / best / 1e9:6.2f} GB/s  ({best:.3f} s)")
        try:
            from longquant_checks.checkpoints import digest
        except ImportError:
            print("longquant_checks not importable: cached lookup skipped")
            return
        os.environ["LONGQUANT_CACHE"] = str(Path(tmp, "cache"))
        start = time.perf_counter()
        value = digest.file_digest(path)
        first = time.perf_counter() - start
        n = 1000
        start = time.perf_counter()
        for _ in range(n):
            digest.file_digest(path)
        cached = (time.perf_counter() - start) / n
        print(f"  file_digest ({value.split(':')[0]}): first {first:.3f} s, cached lookup {cached * 1e6:.0f} us")


if __name__ == "__main__":
    main()
