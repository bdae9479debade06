"""The Markdown summary of a results folder (report/markdown.py): a pull-request comment, read from summary.json.
A real run's summary is rendered in tests/test_plugin.py; these are the rendering rules and the bad inputs."""

from __future__ import annotations

import json

import pytest

from longquant_checks.cli import main
from longquant_checks.report.markdown import ReportError, load_summary, recovery, render_markdown


def row(checkpoint, cell, level, ref, cand, status, **extra):
    return {"lq_checkpoint": checkpoint, "lq_cell": cell, "lq_level": level, "lq_reference": ref,
            "lq_candidate": cand, "lq_delta": cand - ref, "lq_ci": "[-1.00, 1.00]", "lq_p_holm": 0.5,
            "lq_tolerance": 5.0, "lq_status": status, **extra}


SUMMARY = {"format": 2, "counts": {"passed": 3, "regressed": 2, "not gated": 1},
           "not_gated": [{"test": "a-niah_single_1-128K-en", "reason": "too-long", "allowed": False,
                          "detail": "exceeds the model's max length 8192"}],
           "tests": [row("good", "niah_single_1-1K-en", "cell", 80.0, 80.0, "pass"),
                     row("good", "aggregate", "aggregate", 80.0, 80.0, "pass"),
                     row("bad", "niah_single_1-1K-en", "cell", 80.0, 60.0, "pass"),
                     row("bad", "niah_single_1-1K-de", "cell", 50.0, 0.0, "fail", lq_p_holm=0.0),
                     row("bad", "language-de", "language", 50.0, 0.0, "fail"),
                     row("bad", "aggregate", "aggregate", 65.0, 30.0, "pass",
                         lq_baseline_change="+ niah_single_1-1K-de: new baseline")]}


def test_failing_candidates_and_cells_come_first_with_recovery():
    md = render_markdown(SUMMARY)
    assert md.startswith("## longquant gate: 3 passed, 2 regressed, 1 not gated")
    assert "| bad | **FAIL** | 2 of 4 | -35.0 points, recovery 46% |" in md
    assert md.index("### bad") < md.index("### good")
    bad = md[md.index("### bad"):md.index("### good")]
    lines = [line for line in bad.splitlines() if line.startswith("| ") and "reference" not in line]
    assert lines[0].startswith("| niah_single_1-1K-de | 50.0 | 0.0 | -50.0 |") and "<1e-05" in lines[0]
    assert lines[1].startswith("| language de |")
    assert "| 75% |" in bad  # 60 of 80
    assert "- a-niah_single_1-128K-en: too-long: exceeds" in md
    assert "- + niah_single_1-1K-de: new baseline" in md


def test_recovery_of_a_reference_that_scored_nothing():
    assert recovery({"lq_reference": 0.0, "lq_candidate": 0.0}) == "-"
    assert recovery({"lq_reference": 40.0, "lq_candidate": 50.0}) == "125%"


def test_cli_writes_the_file_and_bad_folders_are_clear_errors(tmp_path, capsys):
    (tmp_path / "summary.json").write_text(json.dumps(SUMMARY))
    assert main(["report", str(tmp_path), "-o", str(tmp_path / "pr.md")]) == 0
    assert (tmp_path / "pr.md").read_text() == render_markdown(SUMMARY)
    assert main(["report", str(tmp_path / "missing")]) == 2
    printed = "".join(capsys.readouterr().out.split())  # rich wraps long lines
    assert "missing/summary.jsonnotfound:pointataresultsfolder" in printed
    (tmp_path / "summary.json").write_text("{not json")
    with pytest.raises(ReportError, match="not readable JSON"):
        load_summary(tmp_path)
    (tmp_path / "summary.json").write_text('{"tests": 3}')
    with pytest.raises(ReportError, match="not a longquant summary"):
        load_summary(tmp_path)


def test_the_run_section_names_settings_fingerprints_and_versions(tmp_path):
    result = tmp_path / "bad.jsonl"
    result.write_text(json.dumps({"checkpoint_identity": {"fingerprint": "ab" * 32, "recipe": "bnb-nf4"},
                                  "engine": {"kind": "hf", "settings": {"dtype": "float32"}, "device": "cpu",
                                             "versions": {"torch": "2.13.0", "transformers": "5.19.0"}}}) + "\n")
    summary = json.loads(json.dumps(SUMMARY))
    for r in summary["tests"]:
        if r["lq_checkpoint"] == "bad":
            r["lq_result_file"] = str(result)
    summary["run"] = {"config": "longquant.toml", "reference": "demo", "engine": "hf", "device": "cpu",
                      "mode": "default", "samples": 20, "seed": 0, "tasks": ["niah_single_1"], "buckets": ["1K"],
                      "languages": ["en", "de"], "prompt": {"system_prompt": "none", "answer_prefix": True}}
    md = render_markdown(summary)
    run = md[md.index("### Run"):]
    assert "- config `longquant.toml`, reference demo, engine hf on cpu, mode default, 20 samples per cell" in run
    assert "system prompt none, answer prefix on" in run
    assert "- bad: fingerprint `abababababababab`, recipe bnb-nf4; hf (dtype=float32) on cpu" in run
    assert "- versions: torch 2.13.0, transformers 5.19.0" in run
    assert "- good:" not in run  # no result file: nothing made up


def test_divergence_tests_and_trends_get_their_own_table_in_their_units_and_flips_show():
    summary = {"counts": {"passed": 2, "regressed": 1}, "tests": [
        row("nf4", "niah_single_3-1K-en", "cell", 80.0, 60.0, "pass", lq_flips_lost=3, lq_flips_gained=1,
            lq_flips={"lost": ["a", "b", "c"], "gained": ["d"]}),
        row("nf4", "niah_single_3-1K-en", "cell", 0.0, 0.183, "fail", lq_signal="kl", lq_unit="nats/token KL",
            lq_delta=-0.183, lq_ci_low=-0.25, lq_ci_high=-0.12, lq_tolerance=0.1),
        row("nf4", "trend-niah_single_3", "trend", 0.0, 0.037, "pass", lq_signal="kl", lq_delta=-0.037,
            lq_unit="nats/token KL per doubling of length", lq_ci_low=-0.08, lq_ci_high=0.01, lq_tolerance=0.05)]}
    md = render_markdown(summary)
    assert "| niah_single_3-1K-en | 80.0 | 60.0 | -20.0 | [-1.00, 1.00] | 75% | -3/+1 |" in md
    assert "| kl niah_single_3-1K-en | 0.183 | [0.12, 0.25] | nats/token KL |" in md
    assert "| kl length trend of niah_single_3 | 0.037 | [-0.01, 0.08] | nats/token KL per doubling of length |" in md
    # the verdict line's average is accuracy's, never a divergence
    assert "| nf4 | **FAIL** | 1 of 3 | - |" in md
