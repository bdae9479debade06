"""The embedded default gate (fixtures/longquant.toml) against its committed baselines, for real on CPU."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest

from longquant_checks.config import load_config

pytest_plugins = ["pytester"]
REPO = Path(__file__).resolve().parents[1]
DEMO = REPO / "fixtures" / "longquant.toml"


def test_demo_config_is_valid_and_spans_8_and_4_bit():
    config = load_config(DEMO)
    from longquant_checks.checkpoints.recipes import get_recipe

    g = config.gate
    precisions = {get_recipe(c.recipe).precision for c in g.candidates}
    assert precisions == {"8-bit", "4-bit"} and g.divergence.enabled
    # issue 14: at least 2 buckets, 3 languages from 2 scripts, 2 tasks
    assert len(g.buckets) >= 2 and len(g.tasks) >= 2 and len(g.languages) >= 3
    assert {"en", "ru"} <= set(g.languages)  # Latin and Cyrillic
    assert config.baseline_dir.resolve() == (REPO / "baselines").resolve()


def test_committed_baselines_cover_the_demo_plan():
    from longquant_checks.baselines import BaselineStore
    from longquant_checks.plan import plan_cells
    from longquant_checks.setups import EngineSetup

    config = load_config(DEMO)
    g = config.gate
    # float32 on every CPU (fixtures/longquant.toml), so the committed setup folder is the same on every machine.
    setup = EngineSetup(g.engine, g.device, dict(g.engine_args))
    store = BaselineStore(config.baseline_dir, config.reference_name, setup.label())
    assert setup.label() == "hf-cpu-float32"
    planned = {p.cell for p in plan_cells(g.tasks, g.buckets, g.languages)}
    stored = set(store.cells())
    assert planned <= stored, f"missing baselines: {sorted(c.id for c in planned - stored)}"
    for cell in planned:
        entry = store.get(cell)
        assert entry.n == g.samples and entry.engine["kind"] == "hf" and entry.seed == g.seed
        assert entry.setup == setup.baseline_setup() and all(s.get("text") is not None for s in entry.samples)
        assert entry.has_traces and len(entry.traces()) == g.samples  # the divergence signal's reference side


@pytest.mark.model
def test_reference_rerun_passes_against_committed_baselines(pytester):
    """Same prompts, same engine and dtype: a fresh reference run reproduces the committed baselines (the first
    sample of every cell, for CI's time; --lq-limit compares the same prefix), on both signals."""
    data = tomllib.loads(DEMO.read_text())
    data.update(rerun_reference=True, candidates=[], baseline_dir=str(REPO / "baselines"),
                results_dir=str(pytester.path / "results"))
    lines = []
    for key, value in data.items():
        if key in ("calibration", "candidates"):
            continue
        if isinstance(value, dict):
            value = "{ " + ", ".join(f"{k} = {v!r}".replace("'", '"').replace("True", "true").replace("False", "false")
                                     for k, v in value.items()) + " }"
        elif isinstance(value, (list, str, bool)):
            value = repr(value).replace("'", '"').replace("True", "true").replace("False", "false")
        lines.append(f"{key} = {value}")
    pytester.makefile(".toml", longquant="\n".join(lines) + "\n")
    pytester.makepyfile(test_gate="def test_long_context(lq_cell):\n    lq_cell.check()\n")
    result = pytester.runpytest_subprocess("--lq-limit", "1", "-p", "no:cacheprovider")
    outcomes = result.parseoutcomes()
    assert outcomes.get("failed", 0) == 0, result.stdout.str()[-3000:]
    cells = len(data["tasks"]) * len(data["buckets"]) * len(data["languages"])
    # Every cell, a gate per language and per bucket (where there is more than one), and the aggregate; the same
    # again for the divergence signal; a length trend per task of each signal.
    levels = sum(len(data[axis]) for axis in ("languages", "buckets") if len(data[axis]) > 1)
    assert outcomes["passed"] == 2 * (cells + levels + 1) + 2 * len(data["tasks"])
    result.stdout.fnmatch_lines(["*reference: average delta +0.00*"])
