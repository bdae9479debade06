"""Plain dataclasses that flow between stages: Cell (what to test) and Sample (one prompt)."""

from __future__ import annotations

import hashlib
from array import array
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .errors import UnknownValueError

# Precision classes: each has its own default tolerances (gate.py). Here, so gate, config, engines and checkpoints
# can all import it without cycles.
PRECISIONS = ("16-bit", "8-bit", "4-bit")

BUCKETS: dict[str, int] = {
    "1K": 1024, "2K": 2048, "4K": 4096, "8K": 8192,
    "16K": 16384, "32K": 32768, "64K": 65536, "128K": 131072,
}


def parse_bucket(value: str | int) -> int:
    """'4K', '4k', '4096' or 4096 -> 4096. Only the eight standard buckets are accepted."""
    if isinstance(value, int) and value in BUCKETS.values():
        return value
    text = str(value).strip()
    if text.upper() in BUCKETS:
        return BUCKETS[text.upper()]
    if text.isdigit() and int(text) in BUCKETS.values():
        return int(text)
    raise UnknownValueError("bucket", value, list(BUCKETS))


def bucket_label(tokens: int) -> str:
    for label, size in BUCKETS.items():
        if size == tokens:
            return label
    raise UnknownValueError("bucket", tokens, list(BUCKETS))


@dataclass(frozen=True, order=True)
class Cell:
    """One unit of the gate: a task at a length bucket (in the model's tokens) in a language."""

    task: str
    bucket: int
    language: str

    @property
    def id(self) -> str:
        return f"{self.task}-{bucket_label(self.bucket)}-{self.language}"


def hash_token_ids(ids: "list[int] | np.ndarray") -> str:
    """The prompt's identity: sha256 of its token ids as little-endian uint32."""
    return hashlib.sha256(np.asarray(ids, dtype="<u4").tobytes()).hexdigest()


@dataclass
class Sample:
    """One prompt of a cell, exact in the model's tokens.

    `prompt_token_ids` is what engines that accept token ids receive; `messages` (one user turn)
    is the text form for logs and text-only servers. `n_tokens` counts the prompt (chat template
    included); `max_new_tokens` is the task's generation budget; the two never exceed the bucket.
    The ids are kept as a uint32 array (4 bytes a token; a list of Python ints takes ~36: 5 MB per 128K prompt).
    """

    id: str
    cell: Cell
    messages: list[dict[str, str]]
    answers: list[str]
    prompt_token_ids: "array[int]"
    max_new_tokens: int
    metadata: dict[str, Any] = field(default_factory=dict)
    prompt_sha256: str = ""

    def __post_init__(self) -> None:
        if not isinstance(self.prompt_token_ids, array):
            ids = array("I")
            ids.frombytes(np.asarray(self.prompt_token_ids, dtype=np.uint32).tobytes())
            self.prompt_token_ids = ids
        if not self.prompt_sha256:
            self.prompt_sha256 = hash_token_ids(self.prompt_token_ids)

    @property
    def n_tokens(self) -> int:
        return len(self.prompt_token_ids)

    @property
    def prompt_text(self) -> str:
        """The user turn's text (messages may also hold a system turn and a started assistant turn)."""
        return next(m["content"] for m in reversed(self.messages) if m["role"] == "user")
