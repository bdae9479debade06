"""The engine protocol: a context manager that turns samples into outputs. Only engines/ import inference libraries."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol, Sequence

from ..schema import Sample


@dataclass
class Output:
    """One generation: the answer text and what it cost."""

    sample_id: str
    text: str
    n_prompt_tokens: int
    n_output_tokens: int
    seconds: float
    finish_reason: str = ""  # "stop" (end of sequence) or "length" (hit max_new_tokens)


@dataclass
class EngineInfo:
    """What produced the outputs; recorded next to results and baselines."""

    name: str
    version: str
    settings: dict[str, Any] = field(default_factory=dict)
    device: str = "cpu"


def cpu_dtype() -> str:
    """bfloat16 only where the CPU has native bf16 matmul (avx512_bf16/AMX): elsewhere torch emulates it,
    ~100x slower than float32 (measured on an AMD EPYC without avx512_bf16: 2.9 s vs 0.026 s per 2Kx576x1536)."""
    try:
        flags = open("/proc/cpuinfo", encoding="utf-8").read()
    except OSError:
        return "float32"
    return "bfloat16" if ("avx512_bf16" in flags or "amx_bf16" in flags) else "float32"


class Engine(Protocol):
    info: EngineInfo
    max_model_len: int

    def __enter__(self) -> "Engine": ...

    def __exit__(self, *exc: object) -> None: ...

    def generate(self, samples: Sequence[Sample], max_new_tokens: int | None = None) -> list[Output]:
        """Greedy answers to `samples` (token-id prompts), in order. None: each sample's own budget."""
        ...
