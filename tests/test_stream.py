"""One stream per checkpoint (no model): all of a checkpoint's cells go to the engine at once, each cell is saved
the moment its last sample is answered, and an interrupted stream keeps every finished cell."""

from __future__ import annotations

import pytest

from longquant_checks import engines, evaluate
from longquant_checks.checkpoints.resolve import ResolvedCheckpoint
from longquant_checks.engines.base import Engine, EngineInfo, Output
from longquant_checks.results import ResultStore
from longquant_checks.schema import Cell, Sample
from longquant_checks.setups import EngineSetup
from longquant_checks.tasks.base import get_task

CELLS = [Cell("niah_single_2", 1024, lang) for lang in ("de", "en", "fr")]
CHECKPOINT = ResolvedCheckpoint("cand", "/nowhere", "4-bit", "f" * 64)


class Book:
    seed = 0

    def __init__(self, n=4):
        self._samples = {c: [Sample(f"{c.id}-{i}", c, [{"role": "user", "content": "?"}], ["42"], [7, i, 9], 4)
                             for i in range(n)] for c in CELLS}

    def samples(self, cell):
        return self._samples[cell]

    def task(self, name):
        return get_task(name)


class InterleavingEngine(Engine):
    """Answers in reverse arrival order within windows of 5 (cells finish out of order), counting its streams.
    `on_answer(position)` runs before each answer is handed out (to look at the store mid-stream)."""

    max_model_len = 4096

    def __init__(self, on_answer=None, stop_after=None):
        self.info = EngineInfo("fake", "1")
        self.streams, self.answered, self.on_answer, self.stop_after = 0, 0, on_answer, stop_after

    def stream(self, samples):
        self.streams += 1
        window = []
        for position, sample in enumerate(samples):
            window.append((position, sample))
            if len(window) == 5:
                yield from self._answer(window)
                window = []
        yield from self._answer(window)

    def _answer(self, window):
        for position, sample in reversed(window):
            if self.stop_after is not None and self.answered == self.stop_after:
                raise KeyboardInterrupt
            if self.on_answer:
                self.on_answer(position)
            self.answered += 1
            yield position, Output(sample.id, "42", sample.n_tokens, 1, 0.01, "stop")


def runner_with(engine, tmp_path, monkeypatch, book=None):
    monkeypatch.setattr(engines, "open_engine", lambda *a, **k: engine)
    store = ResultStore(tmp_path)
    return evaluate.CheckpointRunner(CHECKPOINT, EngineSetup("hf", "cpu", {"dtype": "float32"}), store,
                                     book or Book()), store


def test_a_checkpoints_cells_are_one_stream_and_each_is_saved_when_it_finishes(tmp_path, monkeypatch):
    saved_when = {}
    runner = None

    def look(position):  # before answer `position`: which cells are already on disk
        for cell in CELLS:
            if cell not in saved_when and runner.store.load("cand", cell, runner.key(cell)) is not None:
                saved_when[cell] = engine.answered

    engine = InterleavingEngine(on_answer=look)
    runner, store = runner_with(engine, tmp_path, monkeypatch)
    results = runner.run_many(CELLS)
    assert engine.streams == 1  # not one generate call per cell
    assert all(results[c].scores == [1.0] * 4 for c in CELLS)
    # de (positions 0-3) is complete after the first window of 5; it was on disk before the stream went on.
    assert saved_when[CELLS[0]] == 5 and saved_when[CELLS[1]] == 10


def test_an_interrupted_stream_keeps_finished_cells_and_resumes_the_rest(tmp_path, monkeypatch):
    engine = InterleavingEngine(stop_after=7)  # de done at 5; en half done when interrupted
    runner, store = runner_with(engine, tmp_path, monkeypatch)
    with pytest.raises(KeyboardInterrupt):
        runner.run_many(CELLS)
    assert store.load("cand", CELLS[0], runner.key(CELLS[0])) is not None
    assert store.load("cand", CELLS[1], runner.key(CELLS[1])) is None
    again = InterleavingEngine()
    runner2, _ = runner_with(again, tmp_path, monkeypatch)
    results = runner2.run_many(CELLS)
    assert again.answered == 8  # only en and fr were generated
    assert all(not isinstance(results[c], Exception) for c in CELLS)


def test_an_engine_failing_mid_stream_fails_only_the_unfinished_cells(tmp_path, monkeypatch):
    class Dying(InterleavingEngine):
        def _answer(self, window):
            if self.answered >= 5:
                raise RuntimeError("CUDA error: an illegal memory access was encountered")
            yield from super()._answer(window)

    runner, _ = runner_with(Dying(), tmp_path, monkeypatch)
    results = runner.run_many(CELLS)
    assert results[CELLS[0]].scores == [1.0] * 4
    for cell in CELLS[1:]:
        assert isinstance(results[cell], evaluate.LongquantError)
        assert "illegal memory access" in str(results[cell]) and "while generating" in str(results[cell])


def test_the_sample_book_holds_only_recent_cells(tok, tmp_path, monkeypatch):
    from longquant_checks.samples import SampleBook

    monkeypatch.setenv("LONGQUANT_CACHE", str(tmp_path))
    book = SampleBook(tok, 2, 0, keep_tokens=3000)
    cells = [Cell("niah_single_2", 1024, lang) for lang in ("en", "de", "fr")]
    first = [s.prompt_sha256 for s in book.samples(cells[0])]
    for cell in cells[1:]:
        book.samples(cell)
    assert cells[0] not in book._samples and sum(s.n_tokens for c in book._samples for s in book._samples[c]) <= 3000
    assert [s.prompt_sha256 for s in book.samples(cells[0])] == first  # read back from disk, byte-identical
    assert book.samples(cells[0])[0].prompt_token_ids.itemsize == 4


def test_sample_cache_prunes_sets_unused_for_a_while_and_keeps_used_ones(tok, tmp_path, monkeypatch):
    import os
    import time

    from longquant_checks.cli import main
    from longquant_checks.samples import cache_path, load_or_generate

    monkeypatch.setenv("LONGQUANT_CACHE", str(tmp_path))
    task = get_task("niah_single_2")
    old, used = Cell("niah_single_2", 1024, "en"), Cell("niah_single_2", 1024, "de")
    for cell in (old, used):
        load_or_generate(task, cell, tok, 2, 0)
    month_ago = time.time() - 31 * 86400
    for cell in (old, used):
        os.utime(cache_path(task, cell, tok, 2, 0), (month_ago, month_ago))
    assert load_or_generate(task, used, tok, 2, 0)[1]  # a cache hit marks the set as used
    assert main(["prune-samples", "--unused-days", "30"]) == 0
    assert not cache_path(task, old, tok, 2, 0).exists() and cache_path(task, used, tok, 2, 0).exists()
