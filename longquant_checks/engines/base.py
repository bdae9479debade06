"""The engine protocol: a context manager that turns samples into outputs. Only engines/ import inference libraries."""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field, replace
from typing import Any, Iterable, Iterator, Mapping, Sequence

from ..divergence import ForcedScores, TokenTrace
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
    trace: TokenTrace | None = None  # Scoring.top_k > 0: this answer's own tokens and top-k log-probabilities
    forced: ForcedScores | None = None  # Scoring.forced: the given reference answer teacher-forced through this model


@dataclass
class Scoring:
    """What an engine measures beside each answer, for the divergence signal (divergence.py). `top_k` > 0: each
    output carries its own answer's TokenTrace (the reference's side, stored with its baseline). `forced`: sample
    id -> the reference's trace, teacher-forced through this model on the same prompt (the candidate's side)."""

    top_k: int = 0
    forced: Mapping[str, TokenTrace] = field(default_factory=dict)

    def __bool__(self) -> bool:
        return self.top_k > 0 or bool(self.forced)


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


class Engine:
    """The one engine base class (lm-evaluation-harness's LM): an engine implements `stream`, everything else
    derives from it. A context manager; `close` releases the model."""

    info: EngineInfo
    max_model_len: int
    # Why `stream` cannot honour a Scoring (the accuracy gate then stands alone); None where it can.
    divergence_unavailable: str | None = "this engine does not measure token log-probabilities"

    def __enter__(self) -> "Engine":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        pass

    def resources(self) -> dict[str, Any]:
        """What the engine used so far, for the efficiency report (meter.py): peak_memory_bytes with memory_kind
        ("cuda" or "rss") and memory_note, kv_cache_bytes_per_token with kv_cache_note, engine_reported (figures the
        engine itself measured), caveats. Empty where the engine cannot tell."""
        return {}

    def stream(self, samples: Iterable[Sample], scoring: Scoring | None = None) -> Iterator[tuple[int, Output]]:
        """Greedy answers as they finish, as (position in `samples`, output), in any order. `samples` is consumed
        lazily, so a plan larger than memory can be fed from a generator; every sample is answered once.
        `scoring` (where `divergence_unavailable` is None): the traces and forced scores to attach to the outputs."""
        raise NotImplementedError

    def generate(self, samples: Sequence[Sample], max_new_tokens: int | None = None) -> list[Output]:
        """Greedy answers to `samples` (token-id prompts), in order. None: each sample's own budget."""
        if max_new_tokens is not None:
            samples = [replace(s, max_new_tokens=max_new_tokens) for s in samples]
        found = dict(self.stream(samples))
        return [found[i] for i in range(len(samples))]


_DTYPE_BYTES = {"float32": 4, "float": 4, "bfloat16": 2, "float16": 2, "half": 2, "fp8": 1, "fp8_e4m3": 1,
                "fp8_e5m2": 1, "int8": 1}


def kv_bytes_per_token(config: dict[str, Any], dtype: str) -> int | None:
    """Keys and values one token adds to the cache: 2 x layers x KV heads x head size x element bytes, from a model
    config (dict form of config.json); None when the config lacks a number or the dtype is unknown."""
    config = config.get("text_config", config)
    layers, heads = config.get("num_hidden_layers"), config.get("num_attention_heads")
    kv_heads = config.get("num_key_value_heads") or heads
    head_dim = config.get("head_dim") or (config["hidden_size"] // heads if config.get("hidden_size") and heads
                                          else None)
    size = _DTYPE_BYTES.get(str(dtype).removeprefix("torch."))
    if not all(isinstance(x, int) and x > 0 for x in (layers, kv_heads, head_dim)) or size is None:
        return None
    return 2 * layers * kv_heads * head_dim * size


def by_cell(samples: Iterable[Sample]) -> Iterator[list[tuple[int, Sample]]]:
    """Consecutive samples of the same cell, with their positions in the stream."""
    for _, group in itertools.groupby(enumerate(samples), key=lambda pair: pair[1].cell):
        yield list(group)
