"""The samples stage: generate a cell's prompts, cached on disk by everything that determines them.

Cache key: (task, task version, cell, tokenizer fingerprint, n, seed, text-source fingerprint), so a
repeated run loads byte-identical prompts instead of rebuilding them, and any change to the task,
the tokenizer, the language data or a user corpus builds a fresh set.
"""

from __future__ import annotations

import base64
import gzip
import hashlib
import json
import os
import time
from collections import OrderedDict
from pathlib import Path

import numpy as np

from .schema import Cell, Sample
from .storage import cache_dir, write_bytes_atomic
from .tasks.base import Task, TextSources, get_task
from .text.tokens import PromptTokenizer

_FORMAT = 1


def cache_key(task: Task, cell: Cell, tok: PromptTokenizer, n: int, seed: int) -> str:
    parts = [str(_FORMAT), task.name, task.version, cell.id, tok.fingerprint, str(n), str(seed),
             task.sources_fingerprint(cell.language)]
    return hashlib.sha256("\x00".join(parts).encode("utf-8")).hexdigest()


def cache_path(task: Task, cell: Cell, tok: PromptTokenizer, n: int, seed: int) -> Path:
    key = cache_key(task, cell, tok, n, seed)
    return cache_dir("samples", f"{task.name}-v{task.version}") / f"{cell.id}-n{n}-s{seed}-{key[:20]}.jsonl.gz"


def _encode(sample: Sample) -> dict:
    ids = base64.b64encode(np.asarray(sample.prompt_token_ids, dtype="<u4").tobytes()).decode("ascii")
    return {"id": sample.id, "cell": [sample.cell.task, sample.cell.bucket, sample.cell.language],
            "messages": sample.messages, "answers": sample.answers, "ids": ids,
            "max_new_tokens": sample.max_new_tokens, "metadata": sample.metadata,
            "prompt_sha256": sample.prompt_sha256}


def _decode(obj: dict) -> Sample:
    ids = np.frombuffer(base64.b64decode(obj["ids"]), dtype="<u4")
    sample = Sample(id=obj["id"], cell=Cell(*obj["cell"]), messages=obj["messages"], answers=obj["answers"],
                    prompt_token_ids=ids, max_new_tokens=obj["max_new_tokens"], metadata=obj["metadata"])
    if sample.prompt_sha256 != obj["prompt_sha256"]:
        raise ValueError(f"cached sample {obj['id']} is corrupt (prompt hash mismatch)")
    return sample


def _read(path: Path, n: int) -> list[Sample] | None:
    try:
        with gzip.open(path, "rt", encoding="utf-8") as fh:
            samples = [_decode(json.loads(line)) for line in fh]
    except (OSError, ValueError, KeyError, EOFError):
        return None  # unreadable entry: rebuilt and overwritten
    if len(samples) != n:
        return None
    os.utime(path)  # its mtime is its last use: prune_samples removes sets unused for a while
    return samples


def load_or_generate(task: Task, cell: Cell, tok: PromptTokenizer, n: int, seed: int,
                     use_cache: bool = True) -> tuple[list[Sample], bool]:
    """The cell's samples and whether they came from the cache. Building is locked per entry: two processes (xdist
    workers) asking for the same cell build it once."""
    if not use_cache:
        return task.generate(cell, tok, n, seed), False
    path = cache_path(task, cell, tok, n, seed)
    if path.is_file() and (found := _read(path, n)) is not None:
        return found, True
    from filelock import FileLock

    with FileLock(str(path) + ".lock"):
        if path.is_file() and (found := _read(path, n)) is not None:
            return found, True  # built by another process while we waited
        samples = task.generate(cell, tok, n, seed)
        payload = "".join(json.dumps(_encode(s), ensure_ascii=False) + "\n" for s in samples)
        write_bytes_atomic(path, gzip.compress(payload.encode("utf-8"), compresslevel=3, mtime=0))
    return samples, False


def prune_samples(unused_days: float) -> tuple[int, int]:
    """Delete cached sample sets not used for `unused_days` days; returns (files, bytes) removed. A set in use is
    locked, so it is skipped."""
    from filelock import FileLock, Timeout

    cutoff = time.time() - unused_days * 86400
    files = size = 0
    for path in cache_dir("samples").rglob("*.jsonl.gz"):
        try:
            if path.stat().st_mtime >= cutoff:
                continue
            with FileLock(str(path) + ".lock", timeout=0):
                nbytes = path.stat().st_size
                path.unlink()
        except (Timeout, OSError):
            continue
        Path(str(path) + ".lock").unlink(missing_ok=True)
        files, size = files + 1, size + nbytes
    return files, size


class SampleBook:
    """Each cell's samples, built once with the reference's tokenizer (every checkpoint sees byte-identical token
    ids) and cached on disk. In memory it holds only the most recently used cells, up to `keep_tokens` prompt
    tokens (4 bytes each), so memory is bounded by what is in flight, not by the plan: an evicted cell is read back
    from the disk cache, byte-identical."""

    def __init__(self, tokenizer: PromptTokenizer, n: int, seed: int, sources: TextSources | None = None,
                 keep_tokens: int = 64_000_000):
        self.tokenizer, self.n, self.seed, self.sources = tokenizer, n, seed, sources
        self.keep_tokens = keep_tokens
        self._tasks: dict[str, Task] = {}
        self._samples: OrderedDict[Cell, list[Sample]] = OrderedDict()
        self._tokens = 0

    def task(self, name: str) -> Task:
        if name not in self._tasks:
            self._tasks[name] = get_task(name, self.sources)
        return self._tasks[name]

    def samples(self, cell: Cell) -> list[Sample]:
        if cell in self._samples:
            self._samples.move_to_end(cell)
            return self._samples[cell]
        samples, _ = load_or_generate(self.task(cell.task), cell, self.tokenizer, self.n, self.seed)
        self._samples[cell] = samples
        self._tokens += sum(s.n_tokens for s in samples)
        while self._tokens > self.keep_tokens and len(self._samples) > 1:
            _, dropped = self._samples.popitem(last=False)
            self._tokens -= sum(s.n_tokens for s in dropped)
        return samples
