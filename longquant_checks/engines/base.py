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


class Engine(Protocol):
    info: EngineInfo
    max_model_len: int

    def __enter__(self) -> "Engine": ...

    def __exit__(self, *exc: object) -> None: ...

    def generate(self, samples: Sequence[Sample], max_new_tokens: int | None = None) -> list[Output]:
        """Greedy answers to `samples` (token-id prompts), in order. None: each sample's own budget."""
        ...
