"""Which baseline a cell meets: per-setup refusals, update modes, re-scoring a changed scorer (no model needed)."""

from __future__ import annotations

import json

import pytest

from longquant_checks.baseline_policy import BaselinePolicy
from longquant_checks.baselines import BaselineEntry, BaselineStore
from longquant_checks.results import CellResult, SampleResult
from longquant_checks.schema import Cell, Sample
from longquant_checks.setups import EngineSetup
from longquant_checks.tasks.base import get_task

CELL = Cell("niah_none", 1024, "ru")
TASK = get_task("niah_none")
HF = EngineSetup("hf", "cpu", {"dtype": "float32"})
VLLM = EngineSetup("vllm", "cpu", {"dtype": "float32"})


def samples(n=4):
    return [Sample(f"s{i}", CELL, [{"role": "user", "content": "?"}], ["нет"], [1, 2, i], 8) for i in range(n)]


def result(texts, scorer_version=TASK.scorer_version):
    rows = [SampleResult(s.id, s.prompt_sha256, float(TASK.score(s, t)), t, 3, 1, 0.1)
            for s, t in zip(samples(len(texts)), texts)]
    return CellResult("reference", CELL, rows, "key", {"fingerprint": "f" * 64}, {"kind": "hf", "settings": {}},
                      TASK.version, 0, scorer_version=scorer_version)


def policy(tmp_path, setup, update=None):
    store = BaselineStore(tmp_path, "ref", setup.label())
    return BaselinePolicy(store, setup.baseline_setup(), update, False,
                          lambda mode, cell: f"python -m pytest --lq-update-baselines={mode} -k {cell.id}")


class Reference:
    """Stands in for the reference's runner: records how it was asked to run."""

    def __init__(self, texts):
        self.texts, self.calls = texts, []

    def __call__(self, cell, fresh):
        self.calls.append(fresh)
        return result(self.texts)


def test_missing_baseline_names_its_setup_and_the_command(tmp_path):
    choice = policy(tmp_path, HF).choose(CELL, samples(), TASK, "f" * 64, Reference([]))
    assert choice.entry is None
    assert "no baseline for niah_none-1K-ru on engine setup hf-cpu-float32" in choice.problem
    assert "`python -m pytest --lq-update-baselines=missing -k niah_none-1K-ru`" in choice.problem


def test_baseline_of_another_setup_is_refused_naming_field_and_values(tmp_path):
    made = policy(tmp_path, HF, "missing")
    made.choose(CELL, samples(), TASK, "f" * 64, Reference(["нет"] * 4))
    # The same file read by a run whose setup differs (e.g. a copied folder): refused, field by field.
    other = BaselinePolicy(made.store, VLLM.baseline_setup(), None, False, made.refresh_command)
    choice = other.choose(CELL, samples(), TASK, "f" * 64, Reference([]))
    assert "engine setup engine: 'hf' in the baseline, 'vllm' in this run" in choice.problem
    assert "--lq-update-baselines=failed -k niah_none-1K-ru" in choice.problem
    # Another reference checkpoint (content fingerprint) is refused too.
    assert "the reference checkpoint changed" in made.choose(CELL, samples(), TASK, "e" * 64, Reference([])).problem


def test_update_all_reruns_the_reference_bypassing_the_cache(tmp_path):
    reference = Reference(["нет"] * 4)
    policy(tmp_path, HF, "missing").choose(CELL, samples(), TASK, "f" * 64, reference)
    policy(tmp_path, HF, "failed").choose(CELL, samples(), TASK, "f" * 64, reference)  # nothing wrong: no run
    policy(tmp_path, HF, "all").choose(CELL, samples(), TASK, "f" * 64, reference)
    assert reference.calls == [False, True]


def test_changed_scorer_rescores_the_baseline_from_its_stored_answers(tmp_path):
    """Baselines scored with the old niah_none scorer (ASCII boundaries: «планета» counted as «нет»)."""
    made = policy(tmp_path, HF, "missing")
    made.choose(CELL, samples(), TASK, "f" * 64, Reference(["нет", "планета", "нет.", "Ответ: нет"]))
    path = made.store.file_for(CELL.task)
    entry = json.loads(path.read_text())
    entry["scorer_version"], entry["mean"] = "1", 100.0
    for s in entry["samples"]:
        s["score"] = 1.0  # what the old scorer gave
    path.write_text(json.dumps(entry) + "\n")
    fresh = policy(tmp_path, HF)
    choice = fresh.choose(CELL, samples(), TASK, "f" * 64, Reference([]))
    assert choice.problem is None
    assert [s["score"] for s in choice.entry.samples] == [1.0, 0.0, 1.0, 1.0]
    assert "re-scored from its stored answers (scorer v1 -> v2: mean 100.0 -> 75.0)" in choice.notes[0]
    assert json.loads(path.read_text())["scorer_version"] == "1"  # in memory only, until an update
    reference = Reference(["нет", "планета", "нет.", "Ответ: нет"])
    policy(tmp_path, HF, "failed").choose(CELL, samples(), TASK, "f" * 64, reference)
    assert reference.calls == [False] and json.loads(path.read_text())["scorer_version"] == TASK.scorer_version


def test_old_layout_baseline_is_pointed_out_not_used(tmp_path):
    legacy = tmp_path / "ref" / "niah_none.jsonl"
    legacy.parent.mkdir(parents=True)
    legacy.write_text("{}\n")
    choice = policy(tmp_path, HF).choose(CELL, samples(), TASK, "f" * 64, Reference([]))
    assert f"{legacy} has a baseline of the layout before per-setup baselines" in choice.problem


def test_limited_run_never_writes(tmp_path):
    limited = BaselinePolicy(BaselineStore(tmp_path, "ref", HF.label()), HF.baseline_setup(), "missing", True,
                             lambda mode, cell: "")
    with pytest.raises(Exception, match="not updated from a --lq-limit run"):
        limited.choose(CELL, samples(), TASK, "f" * 64, Reference([]))


def test_update_all_reruns_the_reference_once_per_cell_per_session(tmp_path):
    """Every candidate asks for the same cell's baseline: the first ask re-runs the reference, the others meet that
    fresh entry (they used to re-run it each: three candidates, three reference runs, possibly three baselines)."""
    p = policy(tmp_path, HF, "all")
    reference = Reference(["нет"] * 4)
    first = p.choose(CELL, samples(), TASK, "f" * 64, reference)
    assert not p.wants_reference_run(CELL, samples(), TASK, "f" * 64)
    second = p.choose(CELL, samples(), TASK, "f" * 64, reference)
    assert reference.calls == [True]
    assert second.entry == first.entry and second.change is None
    assert len(p.changes) == 1
