"""The run stage without a model: an engine that cannot start fails once; a changed scorer re-scores stored text."""

from __future__ import annotations

import pytest

from longquant_checks import engines, evaluate
from longquant_checks.checkpoints.resolve import ResolvedCheckpoint
from longquant_checks.results import CellResult, ResultStore, SampleResult
from longquant_checks.schema import Cell, Sample
from longquant_checks.setups import EngineSetup
from longquant_checks.tasks.base import get_task

CELL = Cell("niah_none", 1024, "ru")
CHECKPOINT = ResolvedCheckpoint("cand", "/nowhere", "4-bit", "f" * 64)


class Book:
    """The two things a runner asks of its SampleBook."""

    seed = 0

    def __init__(self):
        self._samples = [Sample(f"s{i}", CELL, [{"role": "user", "content": "?"}], ["нет"], [7, i], 8)
                         for i in range(3)]

    def samples(self, cell):
        return self._samples

    def task(self, name):
        return get_task(name)


def test_engine_that_cannot_start_is_tried_once(monkeypatch, tmp_path):
    calls = []

    def failing_open(kind, path, **kwargs):
        calls.append(path)
        raise ModuleNotFoundError("No module named 'vllm._C'")

    monkeypatch.setattr(engines, "open_engine", failing_open)
    runner = evaluate.CheckpointRunner(CHECKPOINT, EngineSetup("vllm", "cuda", {"dtype": "bfloat16"}),
                                       ResultStore(tmp_path), Book())
    for _ in range(3):
        with pytest.raises(evaluate.EngineStartError) as exc:
            runner.run(CELL)
    assert calls == ["/nowhere"]
    text = str(exc.value)
    assert "ModuleNotFoundError: No module named 'vllm._C'" in text and "tried once" in text
    assert "memory" not in text  # no guessing


def test_trust_remote_code_reaches_the_engine_and_the_identity():
    setup = EngineSetup("hf", "cpu", {"dtype": "float32"}, trust_remote_code=True)
    assert setup.engine_kwargs()["trust_remote_code"] is True
    assert setup.identity()["settings"]["trust_remote_code"] is True
    assert "trust_remote_code" not in EngineSetup("hf", "cpu", {}).engine_kwargs()


def test_changed_scorer_rescores_cached_outputs_without_the_engine(monkeypatch, tmp_path):
    monkeypatch.setattr(engines, "open_engine", lambda *a, **k: pytest.fail("the engine must not be opened"))
    book, store = Book(), ResultStore(tmp_path)
    runner = evaluate.CheckpointRunner(CHECKPOINT, EngineSetup("hf", "cpu", {"dtype": "float32"}), store, book)
    key = runner.key(CELL)
    texts = ["нет", "планета", "ответ: нет"]
    old = [SampleResult(s.id, s.prompt_sha256, 1.0, t, 2, 1, 0.1) for s, t in zip(book.samples(CELL), texts)]
    store.save(CellResult("cand", CELL, old, key, CHECKPOINT.identity, {}, "1", 0, scorer_version="1"))
    result = runner.run(CELL)
    assert result.scores == [1.0, 0.0, 1.0] and result.rescored_from == "1"
    assert result.scorer_version == get_task("niah_none").scorer_version and result.longquant_version
    again = store.load("cand", CELL, key)  # saved re-scored: the next run serves it as is
    assert again.scorer_version == result.scorer_version and again.scores == [1.0, 0.0, 1.0]


def test_runner_pool_survives_a_checkpoint_that_cannot_be_made():
    pool = evaluate.RunnerPool()

    def broken():
        raise evaluate.LongquantError("no such checkpoint")

    with pytest.raises(evaluate.LongquantError):
        pool.get(("missing", "hf"), broken)
    made = []
    runner = pool.get(("next", "hf"), lambda: made.append(1) or type("R", (), {"close": lambda self: None})())
    assert made == [1] and runner is pool.get(("next", "hf"), lambda: pytest.fail("made twice"))
