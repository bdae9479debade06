"""The run stage (HELM's controller): a checkpoint + engine setup over cells -> CellResults.

The engine is opened lazily, only when a cell is not in the resume cache, so a warm re-run loads no model at all.
An engine that fails to start fails once: every later cell of that checkpoint gets the same error, with the
engine's root cause, without another attempt (a broken vLLM worker used to re-fail for ten minutes, cell by cell).
"""

from __future__ import annotations

import hashlib
import json
import time
import uuid
from dataclasses import replace
from typing import Any, Callable, Mapping, Sequence

from .checkpoints.resolve import ResolvedCheckpoint
from .engines.base import Scoring
from .divergence import DivergenceError, TokenTrace, measure
from .errors import LongquantError
from .meter import StreamMeter, stream_key
from .progress import Progress, as_progress
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
                 label: str | None = None, progress: Progress | Callable[[str], None] | None = None,
                 top_k: int = 0):
        """`top_k` > 0: record each answer's token trace (a reference whose baselines feed the divergence signal)."""
        self.checkpoint, self.setup, self.store, self.book = checkpoint, setup, store, book
        self.top_k = top_k
        self.label = label or checkpoint.name
        self.progress = as_progress(progress)
        self._engine = None
        self._start_error: EngineStartError | None = None
        self._identity: dict | None = None
        self._start_seconds: float | None = None

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
            self._start_seconds = time.perf_counter() - t0
            self.progress(f"{self.label}: {self.setup.kind} engine ready in {self._start_seconds:.0f} s")
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

    def key(self, cell: Cell, forced: Mapping[str, TokenTrace] | None = None) -> str:
        identity = self.engine_identity()
        scoring = self._scoring_identity(cell, forced)
        if scoring:  # results with the divergence signal are other results than without it
            identity = {**identity, "scoring": scoring}
        return cell_key(self.checkpoint.identity, identity, self.book.samples(cell), self.book.task(cell.task).version)

    def _scoring_identity(self, cell: Cell, forced: Mapping[str, TokenTrace] | None) -> dict:
        out: dict = {}
        if self.top_k:
            out["top_k"] = self.top_k
        if forced:
            digest = hashlib.sha256()
            for s in self.book.samples(cell):
                trace = forced.get(s.id)
                digest.update(json.dumps(trace.to_json() if trace else None, sort_keys=True).encode())
            out["forced"] = digest.hexdigest()
        return out

    def run(self, cell: Cell, fresh: bool = False, forced: Mapping[str, TokenTrace] | None = None) -> CellResult:
        """The cell's result (see run_many); raises the cell's error."""
        found = self.run_many([cell], fresh, forced)[cell]
        if isinstance(found, Exception):
            raise found
        return found

    def run_many(self, cells: Sequence[Cell], fresh: bool = False, forced: Mapping[str, TokenTrace] | None = None
                 ) -> dict[Cell, CellResult | LongquantError]:
        """Each cell's result, or the error that kept it from one. Cached cells come from the resume cache
        (re-scored if the scorer changed); the others go to the engine as one stream, and each is scored and saved
        atomically as soon as its last sample is answered, so an interrupted run keeps every finished cell.
        `fresh` bypasses the cache (a deliberate baseline refresh re-runs the model). `forced`: sample id -> the
        reference's answer trace, teacher-forced through this checkpoint: each sample's result then holds its
        divergence from the reference (or the cell says why the engine could not measure it)."""
        forced = forced or {}
        results: dict[Cell, CellResult | LongquantError] = {}
        keys = {cell: self.key(cell, forced) for cell in cells}
        for cell in cells:
            if not fresh and (found := self._cached(cell, keys[cell])) is not None:
                results[cell] = found
        todo = [c for c in cells if c not in results]
        # Lock every cell to compute, in one order (no two processes wait on each other); a cell finished by another
        # process while we waited is reused, except on a fresh run, which must re-run it.
        locks = {}
        try:
            for cell in sorted(todo):
                lock = self.store.lock(self.label, cell, keys[cell])
                lock.acquire()
                locks[cell] = lock
                if not fresh and (found := self._cached(cell, keys[cell])) is not None:
                    results[cell] = found
            todo = [c for c in todo if c not in results]
            if todo:
                self._stream(todo, keys, results, locks, forced)
        finally:
            for lock in locks.values():
                lock.release()
        return results

    def _stream(self, cells: Sequence[Cell], keys: dict[Cell, str], results: dict, locks: dict,
                forced: Mapping[str, TokenTrace]) -> None:
        try:
            engine = self.engine
        except EngineStartError as exc:
            results.update({c: exc for c in cells})
            return
        unavailable = engine.divergence_unavailable if (forced or self.top_k) else None
        scoring = None if unavailable or not (forced or self.top_k) else Scoring(self.top_k, forced)
        runnable, sizes = [], {}
        for cell in cells:
            try:
                samples = self.book.samples(cell)
            except LongquantError as exc:
                results[cell] = exc
                continue
            needed = max((s.n_tokens + s.max_new_tokens for s in samples), default=0)
            if needed > engine.max_model_len > 0:
                results[cell] = LongquantError(f"cell {cell.id} needs {needed} tokens, over {self.label}'s "
                                               f"max_model_len {engine.max_model_len}")
            else:
                runnable.append(cell)
                sizes[cell] = len(samples)
        self.progress.stream_started(self.label, len(runnable), sum(sizes.values()))
        pending = {cell: {} for cell in runnable}  # cell -> position in the cell -> output
        origin: list[tuple[Cell, int]] = []  # stream position -> (cell, position in the cell)

        def plan():  # read lazily: only the cells in flight are held in memory (SampleBook keeps a few)
            for cell in runnable:
                for index, sample in enumerate(self.book.samples(cell)):
                    origin.append((cell, index))
                    yield sample

        meter = StreamMeter()
        try:
            for position, output in (engine.stream(plan(), scoring) if scoring else engine.stream(plan())):
                cell, index = origin[position]
                pending[cell][index] = output
                meter.add(cell, output.n_prompt_tokens, output.n_output_tokens, output.seconds)
                self.progress.sample_done(self.label)
                if len(pending[cell]) == sizes[cell]:
                    results[cell] = self._finish(cell, keys[cell], pending.pop(cell), engine, meter.t0, forced,
                                                 unavailable or "")
                    locks.pop(cell).release()  # another process may take it from here
        except Exception as exc:  # the engine failed mid-stream: finished cells are saved, the rest fail with its cause
            for cell in pending:
                results[cell] = LongquantError(f"{self.label} {cell.id}: the {self.setup.kind} engine failed while "
                                               f"generating: {_root_cause(exc)}")
            return
        self._save_efficiency(meter, engine)

    def _save_efficiency(self, meter: StreamMeter, engine) -> None:
        """The stream's costs beside its results; a failure to measure never fails the cells."""
        if not meter.samples:
            return
        try:
            resources = engine.resources()
        except Exception as exc:  # the figures are a report's, not the gate's
            resources = {"caveats": [f"the engine could not report its resources: {type(exc).__name__}: {exc}"]}
        identity = self.engine_identity()
        record = meter.record(checkpoint=self.label, key=stream_key(self.checkpoint.identity, identity),
                              identity=self.checkpoint.identity, engine_identity=identity,
                              engine_version=engine.info.version, resources=resources,
                              start_seconds=self._start_seconds, weights_path=self.checkpoint.path,
                              in_flight=bool(self.checkpoint.recipe))
        self.store.save_efficiency(record)

    def _finish(self, cell: Cell, key: str, outputs: dict[int, Any], engine, t0: float,
                forced: Mapping[str, TokenTrace], unavailable: str) -> CellResult:
        samples = self.book.samples(cell)
        task = self.book.task(cell.task)
        results = [SampleResult(s.id, s.prompt_sha256, float(task.score(s, o.text)), o.text, o.n_prompt_tokens,
                                o.n_output_tokens, round(o.seconds, 4), o.finish_reason, *_prompt_ends(s),
                                list(s.answers), trace=o.trace.to_json() if o.trace is not None else None,
                                divergence=_divergence(s.id, forced, o))
                   for s, o in ((s, outputs[i]) for i, s in enumerate(samples))]
        identity = dict(self.engine_identity())
        identity["engine_version"] = engine.info.version
        result = CellResult(self.label, cell, results, key, self.checkpoint.identity, identity, task.version,
                            self.book.seed, scorer_version=task.scorer_version, longquant_version=longquant_version(),
                            prompt=samples[0].metadata.get("prompt", {}) if samples else {},
                            divergence_unavailable=unavailable)
        self.store.save(result)
        self.progress.cell_done(self.label, f"{self.label} {cell.id}: {result.mean_points:.1f} "
                      f"({len(samples)} samples, {time.perf_counter() - t0:.0f} s into the stream)")
        return result

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

    def close(self) -> None:
        if self._engine is not None:
            engine, self._engine = self._engine, None
            engine.__exit__(None, None, None)


def _divergence(sample_id: str, forced: Mapping[str, TokenTrace], output) -> dict | None:
    trace = forced.get(sample_id)
    if trace is None or output.forced is None:
        return None
    try:
        return measure(trace, output.forced).to_json()
    except DivergenceError as exc:
        raise LongquantError(f"sample {sample_id}: {exc}") from None


def _prompt_ends(sample, chars: int = 400) -> tuple[str, str]:
    """The prompt's head and tail as text, for reports (the middle of a long haystack says nothing)."""
    text = sample.prompt_text
    return (text, "") if len(text) <= 2 * chars else (text[:chars], text[-chars:])


def _root_cause(exc: BaseException, lines: int = 12) -> str:
    """The error's own message, at most `lines` lines (a worker's traceback tail is in it), with its type."""
    text = str(exc).strip() or repr(exc)
    kept = text.splitlines()
    if len(kept) > lines:  # the headline (an engine puts its cause there) and the tail (a traceback's end)
        kept = kept[:3] + ["..."] + kept[-(lines - 3):]
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
