"""The run stage (HELM's controller): a checkpoint + engine setup over cells -> CellResults.

The engine is opened lazily, only when a cell is not in the resume cache, so a warm re-run loads no model at all.
An engine that fails to start fails once: every later cell of that checkpoint gets the same error, with the
engine's root cause, without another attempt (a broken vLLM worker used to re-fail for ten minutes, cell by cell).
"""

from __future__ import annotations

import time
import uuid
from dataclasses import replace
from typing import Callable

from .checkpoints.resolve import ResolvedCheckpoint
from .errors import LongquantError
from .results import CellResult, ResultStore, SampleResult, cell_key
from .samples import SampleBook
from .schema import Cell
from .setups import EngineSetup, longquant_version


_RUN_NONCE = uuid.uuid4().hex[:12]  # makes an unpinned remote server's results this process's own


class EngineStartError(LongquantError):
    """The checkpoint's engine could not be opened; raised again, unchanged, for each of its cells."""


class CheckpointRunner:
    """Runs one checkpoint's cells on one engine setup; opens its engine on the first cell that is not cached."""

    def __init__(self, checkpoint: ResolvedCheckpoint, setup: EngineSetup, store: ResultStore, book: SampleBook,
                 label: str | None = None, progress: Callable[[str], None] | None = None):
        self.checkpoint, self.setup, self.store, self.book = checkpoint, setup, store, book
        self.label = label or checkpoint.name
        self.progress = progress or (lambda _msg: None)
        self._engine = None
        self._start_error: EngineStartError | None = None
        self._identity: dict | None = None

    @property
    def engine(self):
        if self._start_error is not None:
            raise self._start_error
        if self._engine is None:
            from .engines import open_engine

            t0 = time.perf_counter()
            try:
                engine = open_engine(self.setup.kind, self.checkpoint.path, recipe=self.checkpoint.recipe,
                                     device=self.setup.device, **self.setup.engine_kwargs())
                self._engine = engine.__enter__()
            except Exception as exc:  # whatever the library raised: its own words are the root cause
                self._start_error = EngineStartError(
                    f"checkpoint {self.label!r}: the {self.setup.kind} engine failed to start "
                    f"(tried once; every cell of this checkpoint reports this): {_root_cause(exc)}")
                self.progress(f"{self.label}: {self.setup.kind} engine failed to start")
                raise self._start_error from None
            self.progress(f"{self.label}: {self.setup.kind} engine ready in {time.perf_counter() - t0:.0f} s")
        return self._engine

    def engine_identity(self) -> dict:
        """The setup's identity; for a remote OpenAI-compatible server also what it reports serving, and the
        user's pin. Unpinned, a remote server's results are never reused by a later run: a redeployment behind the
        same URL and model name is invisible from here."""
        if self._identity is None:
            identity = self.setup.identity()
            s = self.setup.settings
            if self.setup.kind == "openai" and not s.get("managed"):
                from .engines.openai import describe_server

                identity["server"] = describe_server(s.get("base_url", ""), s.get("api_key_env", "OPENAI_API_KEY"))
                identity["pin"] = s.get("pin") or f"unpinned run {_RUN_NONCE}"
            self._identity = identity
        return self._identity

    def key(self, cell: Cell) -> str:
        return cell_key(self.checkpoint.identity, self.engine_identity(), self.book.samples(cell),
                        self.book.task(cell.task).version)

    def run(self, cell: Cell, fresh: bool = False) -> CellResult:
        """The cell's result: from the resume cache (re-scored if the scorer changed), else generated, scored and
        saved atomically. `fresh` bypasses the cache (a deliberate baseline refresh re-runs the model)."""
        key = self.key(cell)
        if not fresh and (found := self._cached(cell, key)) is not None:
            return found
        with self.store.lock(self.label, cell, key):
            # Finished by another process while we waited (not when asked for a fresh run: that one must re-run).
            found = None if fresh else self._cached(cell, key)
            return found if found is not None else self._compute(cell, key)

    def _cached(self, cell: Cell, key: str) -> CellResult | None:
        found = self.store.load(self.label, cell, key)
        task = self.book.task(cell.task)
        if found is None or found.scorer_version == task.scorer_version:
            return found
        # The scorer changed since these outputs were scored: score the stored answers again, no model needed.
        samples = {s.id: s for s in self.book.samples(cell)}
        rescored = [replace(r, score=float(task.score(samples[r.id], r.text))) for r in found.samples]
        result = replace(found, samples=rescored, scorer_version=task.scorer_version,
                         rescored_from=found.scorer_version or "unversioned", longquant_version=longquant_version())
        self.store.save(result)
        self.progress(f"{self.label} {cell.id}: re-scored from stored outputs (scorer v{result.rescored_from} -> "
                      f"v{task.scorer_version})")
        return result

    def _compute(self, cell: Cell, key: str) -> CellResult:
        samples = self.book.samples(cell)
        task = self.book.task(cell.task)
        engine = self.engine
        needed = max((s.n_tokens + s.max_new_tokens for s in samples), default=0)
        if needed > engine.max_model_len > 0:
            raise LongquantError(f"cell {cell.id} needs {needed} tokens, over {self.label}'s max_model_len "
                                 f"{engine.max_model_len}")
        t0 = time.perf_counter()
        outputs = engine.generate(samples)
        results = [SampleResult(s.id, s.prompt_sha256, float(task.score(s, o.text)), o.text, o.n_prompt_tokens,
                                o.n_output_tokens, round(o.seconds, 4), o.finish_reason)
                   for s, o in zip(samples, outputs)]
        identity = dict(self.engine_identity())
        identity["engine_version"] = engine.info.version
        result = CellResult(self.label, cell, results, key, self.checkpoint.identity, identity, task.version,
                            self.book.seed, scorer_version=task.scorer_version, longquant_version=longquant_version())
        self.store.save(result)
        self.progress(f"{self.label} {cell.id}: {result.mean_points:.1f} "
                      f"({time.perf_counter() - t0:.0f} s, {len(samples)} samples)")
        return result

    def close(self) -> None:
        if self._engine is not None:
            engine, self._engine = self._engine, None
            engine.__exit__(None, None, None)


def _root_cause(exc: BaseException, lines: int = 12) -> str:
    """The error's own message, at most `lines` lines (a worker's traceback tail is in it), with its type."""
    text = str(exc).strip() or repr(exc)
    kept = text.splitlines()
    if len(kept) > lines:
        kept = ["..."] + kept[-lines:]
    return f"{type(exc).__name__}: " + "\n".join(kept)


class RunnerPool:
    """One engine at a time: asking for another checkpoint's runner closes the previous one's engine, and a runner
    that failed to start is kept (its error is the answer for all its cells)."""

    def __init__(self) -> None:
        self._runners: dict[tuple[str, str], CheckpointRunner] = {}
        self._open: tuple[str, str] | None = None

    def get(self, key: tuple[str, str], make: Callable[[], CheckpointRunner]) -> CheckpointRunner:
        if self._open is not None and self._open != key:
            self._runners[self._open].close()
            self._open = None
        if key not in self._runners:
            self._runners[key] = make()  # may raise (a checkpoint that cannot be resolved): nothing is open then
        self._open = key
        return self._runners[key]

    def close(self) -> None:
        for runner in self._runners.values():
            runner.close()
        self._open = None
