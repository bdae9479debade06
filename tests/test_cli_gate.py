"""Every `longquant` verb end to end with its exit code, on the real demo model (CPU, transformers), and the reports
rendered from the real results folders those runs leave: Markdown, versioned JSON, and HTML opened in a real headless
Chromium (Debian's chromium package) with a screenshot.

Two results folders of part of the demo plan (fixtures/longquant.toml's niah_single_3 at 1K and 2K in English and
Spanish, its two committed baseline samples per cell, both signals): `good`, where the candidate is a copy of the reference (exit 0),
and `bad`, where the candidate of the same name is the damaged model (exit 1), last week's and today's candidate.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

pytestmark = pytest.mark.model

REPO = Path(__file__).resolve().parents[1]
DEMO = REPO / "fixtures" / "longquant.toml"
LIMIT = ["--", "--lq-limit", "2"]  # 2 samples a cell: the damaged model still fails its average (n=8)


def longquant(*args, cwd=None, env=None, timeout=1500):
    environment = {k: v for k, v in os.environ.items() if k not in ("CI", "PYTEST_XDIST_WORKER")}
    return subprocess.run([sys.executable, "-m", "longquant_checks.cli", *map(str, args)], capture_output=True,
                          text=True, cwd=cwd, env={**environment, **(env or {})}, timeout=timeout)


def _toml(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return str(value)
    if isinstance(value, dict):
        return "{ " + ", ".join(f"{k} = {_toml(v)}" for k, v in value.items()) + " }"
    if isinstance(value, list):
        return "[" + ", ".join(_toml(v) for v in value) + "]"
    return json.dumps(str(value))


def write_config(folder: Path, candidates: list[dict], **overrides) -> Path:
    """Part of the demo plan (one task, two languages: 4 of its 12 cells, for CI's time) with other candidates and
    folders."""
    data = tomllib.loads(DEMO.read_text(encoding="utf-8"))
    data.pop("calibration")
    data.update({"baseline_dir": str(REPO / "baselines"), "results_dir": str(folder / "results"),
                 "tasks": ["niah_single_3"], "languages": ["en", "es"], **overrides})
    lines = [f"{k} = {_toml(v)}" for k, v in data.items() if k != "candidates"]
    for c in candidates:
        lines += ["", "[[candidates]]", *(f"{k} = {_toml(v)}" for k, v in c.items())]
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "longquant.toml"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def runs(tmp_path_factory, demo_path, damaged):
    """Made once per session even under xdist (pytest-xdist's recipe: a lock in the temp root all workers share),
    so the two gate runs are not repeated on each worker that gets a test of this module."""
    from filelock import FileLock

    root = tmp_path_factory.getbasetemp().parent / "cli-runs"
    done = root / "outputs.json"
    with FileLock(str(root) + ".lock"):
        if not done.is_file():
            good = write_config(root / "good", [{"name": "cand", "source": str(demo_path), "precision": "8-bit"}])
            bad = write_config(root / "bad", [{"name": "cand", "source": str(damaged), "precision": "4-bit"}])
            made = {"good": longquant("run", "--config", good, *LIMIT),
                    # Two workers under CI: the controller prints each worker's finished cells, one line each.
                    "bad": longquant("run", "--config", bad, "-n", "2", *LIMIT, env={"CI": "true"})}
            done.write_text(json.dumps({k: {"returncode": v.returncode, "stdout": v.stdout, "stderr": v.stderr}
                                        for k, v in made.items()}))
    out = {k: subprocess.CompletedProcess([], **v) for k, v in json.loads(done.read_text()).items()}
    return root, out


def test_run_exits_0_on_a_pass_and_1_on_regressions(runs):
    root, out = runs
    assert out["good"].returncode == 0, out["good"].stdout[-3000:] + out["good"].stderr[-2000:]
    assert "exit 0 (passed)" in out["good"].stderr
    assert out["bad"].returncode == 1, out["bad"].stdout[-3000:] + out["bad"].stderr[-2000:]
    assert "exit 1 (regressions or not-gated cells)" in out["bad"].stderr
    assert "FAIL: " in out["bad"].stdout and (root / "bad" / "results" / "summary.json").is_file()


def test_xdist_controller_shows_each_workers_cells_one_line_each_in_ci(runs):
    _, out = runs
    # (a line may follow pytest's progress dots on the same terminal line: the poller writes from its own thread)
    lines = [line[line.index("longquant: [gw"):] for line in out["bad"].stdout.splitlines() if "longquant: [gw" in line]
    cells = [line for line in lines if "niah_single_3-" in line and "samples," in line]
    assert len(cells) == 4, "\n".join(lines)  # one line per finished cell, none twice
    assert any("engine ready" in line for line in lines)


def test_compare_names_the_newly_failing_tests(runs):
    root, _ = runs
    good, bad = root / "good" / "results", root / "bad" / "results"
    worse = longquant("compare", good, bad)
    assert worse.returncode == 1, worse.stderr
    assert "newly failing" in worse.stdout and "| cand-aggregate | pass | fail **newly failing** |" in worse.stdout
    same = longquant("compare", good, good, "--format", "json")
    assert same.returncode == 0 and json.loads(same.stdout)["newly_failing"] == []


def test_report_writes_markdown_html_and_versioned_json(runs):
    from longquant_checks.report.data import REPORT_VERSION, Report, report_json_schema

    root, _ = runs
    results = root / "bad" / "results"
    out = longquant("report", results, "--format", "all", "-o", root / "reports")
    assert out.returncode == 0, out.stderr
    report = Report.model_validate_json((root / "reports" / "report.json").read_text())
    data = json.loads((root / "reports" / "report.json").read_text())
    assert data["schema"] == "longquant-report" and data["version"] == REPORT_VERSION
    # The committed schema is the one the code writes (docs/report.md documents its fields).
    assert json.loads((REPO / "docs" / "report.schema.json").read_text()) == report_json_schema()
    (cand,) = report.candidates
    assert cand.verdict == "fail" and cand.failing >= 1 and cand.precision == "4-bit"
    cells = [t for t in cand.tests if t.level == "cell" and t.signal == "accuracy"]
    assert len(cells) == 4 and all(t.ci_low is not None and t.ci_low <= t.delta <= t.ci_high for t in cells)
    assert {t.level for t in cand.tests} == {"cell", "language", "bucket", "aggregate", "trend"}
    kl = [t for t in cand.tests if t.signal == "kl"]
    assert kl and all(t.unit.startswith("nats/token KL") for t in kl)
    drop = report.largest_drops[0]
    sample = drop.samples[0]
    assert sample.expected and sample.reference_answer is not None and sample.prompt_head and sample.prompt_tail
    assert sample.reference_score == 1.0 and sample.candidate_score == 0.0  # a sample it lost comes first
    md = (root / "reports" / "report.md").read_text()
    assert "| cand | **FAIL** |" in md and "recovery" in md


def test_efficiency_figures_are_plausible(runs):
    """Non-zero, and the stream's tokens/s inside the range the engine measured batch by batch (the stream's wall time
    also holds prompt building, scoring and saving between batches: at most 20% below the slowest batch)."""
    root, _ = runs
    (record,) = [json.loads(p.read_text()) for p in (root / "bad" / "results" / "efficiency").glob("*.json")]
    assert record["checkpoint"] == "cand" and record["samples"] == 8
    assert record["prompt_tokens"] > 0 and record["output_tokens"] > 0 and record["wall_seconds"] > 0
    for kind in ("prompt", "output"):
        rate = record[f"{kind}_tokens_per_second"]
        low, high = record["engine_reported"][f"{kind}_tokens_per_second"]
        assert 0 < 0.8 * low <= rate <= high * 1.01, (kind, rate, low, high)
    assert set(record["buckets"]) == {"1K", "2K"}
    assert record["buckets"]["2K"]["seconds_per_sample"] > 0
    assert record["peak_memory_bytes"] > record["weights_memory_bytes"] > 100 * 2**20  # float32 135M: ~540 MB
    assert record["memory_kind"] == "rss" and record["size_on_disk_bytes"] > 100 * 2**20
    # SmolLM2-135M: 30 layers x 3 KV heads x 64 x 2 (keys, values) x 4 bytes (float32)
    assert record["kv_cache_bytes_per_token"] == 30 * 3 * 64 * 2 * 4


def _chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


def test_html_report_renders_in_a_real_browser(runs, tmp_path):
    root, _ = runs
    html = root / "bad" / "report.html"
    assert longquant("report", root / "bad" / "results", "--format", "html", "-o", html).returncode == 0
    text = html.read_text()
    # Nothing to fetch (XML namespace names in the SVGs are names, not requests; the browser below logs any request).
    assert not any(x in text for x in ('src="http', "src='http", 'href="http', "url(http", "@import", "<script"))
    if _chromium() is None:
        if os.environ.get("CI") == "true":
            pytest.fail("CI must test the HTML report in a real browser: install Debian's chromium (.ci/run does)")
        pytest.skip("Debian's chromium is not installed (apt-get install chromium)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=_chromium(), args=[
            "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
            "--disable-sync", "--no-first-run"])
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        problems: list[str] = []
        page.on("console", lambda m: problems.append(f"{m.type}: {m.text}") if m.type in ("error", "warning") else None)
        page.on("pageerror", lambda e: problems.append(f"page error: {e}"))
        page.on("request", lambda r: problems.append(f"request: {r.url}") if not r.url.startswith(("file:", "data:"))
                else None)
        page.goto(html.as_uri())
        figures = page.evaluate("""[...document.querySelectorAll('svg')].map(s => {
            const r = s.getBoundingClientRect();
            return {w: r.width, h: r.height, drawn: s.querySelectorAll('path, use, rect, text').length};
        })""")
        headings = page.evaluate("[...document.querySelectorAll('h2')].map(h => h.textContent)")
        opened = page.evaluate("document.querySelectorAll('details').length")
        shot = Path(os.environ.get("LONGQUANT_SCREENSHOT_DIR", tmp_path)) / "report.png"
        page.screenshot(path=str(shot), full_page=True)
        browser.close()
    assert problems == []
    # Heatmap (one task), curves (one task), trade-off plot: all drawn with a size.
    assert len(figures) >= 3 and all(f["w"] > 100 and f["h"] > 100 and f["drawn"] > 10 for f in figures), figures
    assert any(h.startswith("Where it degrades") for h in headings) and "Efficiency, measured in the same run" in headings
    assert opened >= 4  # per-sample outputs of the largest drops
    assert shot.stat().st_size > 20_000


def test_config_errors_missing_baselines_and_engine_crashes_have_their_codes(runs, tmp_path, demo_path):
    bad_key = write_config(tmp_path / "key", [{"name": "x", "source": str(demo_path)}], sampels=3)
    out = longquant("run", "--config", bad_key)
    assert out.returncode == 2 and "sampels" in out.stdout + out.stderr
    missing = write_config(tmp_path / "missing", [{"name": "x", "source": str(demo_path), "precision": "8-bit"}],
                           baseline_dir=str(tmp_path / "none"), languages=["en"], buckets=["1K"])
    out = longquant("run", "--config", missing, *LIMIT)
    assert out.returncode == 2 and "no baseline" in out.stdout, out.stdout[-2000:]
    broken = tmp_path / "broken"
    broken.mkdir()
    shutil.copy(demo_path / "config.json", broken / "config.json")
    for f in demo_path.iterdir():
        if f.name.startswith("tokenizer") or f.name.endswith(".jinja"):
            shutil.copy(f, broken / f.name)
    (broken / "model.safetensors").write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{}garbage")
    crash = write_config(tmp_path / "crash", [{"name": "broken", "source": str(broken), "precision": "4-bit"}],
                         languages=["en"], buckets=["1K"])
    out = longquant("run", "--config", crash, *LIMIT)
    assert out.returncode == 3, out.stdout[-3000:]
    assert "broken" in out.stdout and "exit 3 (infrastructure error)" in out.stderr
    assert longquant("run", "--config", tmp_path / "nope.toml").returncode == 2



def test_a_not_gated_cell_fails_the_run_unless_allowed(tmp_path, demo_path):
    """16K is beyond the 8K demo model: planned, not run, so not a pass (exit 1); allowed by name, it skips (exit 0)."""
    config = write_config(tmp_path, [{"name": "x", "source": str(demo_path), "precision": "8-bit"}], buckets=["16K"],
                          languages=["en"])
    out = longquant("run", "--config", config)
    assert out.returncode == 1 and "NOT GATED (too-long" in out.stdout, out.stdout[-2000:]
    allowed = longquant("run", "--config", config, "--", "--lq-allow-not-gated=too-long")
    assert allowed.returncode == 0, allowed.stdout[-2000:]


def test_baseline_writes_the_references_baselines_then_the_gate_passes(tmp_path, demo_path):
    same = [{"name": "same", "source": str(demo_path), "precision": "8-bit"}]
    config = write_config(tmp_path, same, baseline_dir=str(tmp_path / "baselines"), languages=["en"], buckets=["1K"],
                          samples=2)
    out = longquant("baseline", "--config", config)
    assert out.returncode == 0, out.stdout[-3000:]
    (written,) = (tmp_path / "baselines").rglob("niah_single_3.jsonl")
    assert json.loads(written.read_text().splitlines()[0])["n"] == 2
    floor = longquant("noise-floor", "--config", config)
    assert floor.returncode == 0, floor.stdout + floor.stderr
    stored = json.loads((written.parent / "noise_floor.json").read_text())
    assert stored["cells"] == 1 and 0 <= stored["signals"]["kl"]["upper"] < 1e-4 and "kl " in floor.stdout
    assert longquant("run", "--config", config).returncode == 0
    nothing = longquant("run", "--config", write_config(tmp_path / "empty", []))  # no candidates: no test
    assert nothing.returncode == 2 and "plans no gate test" in nothing.stdout, nothing.stdout[-2000:]


def test_quantize_prints_the_produced_checkpoint(demo_path):
    out = longquant("quantize", "fp8-dynamic")
    assert out.returncode == 0, out.stdout + out.stderr
    path = Path(out.stdout.strip().splitlines()[-1])
    assert (path / "config.json").is_file() and list(path.glob("*.safetensors"))
    inflight = longquant("quantize", "bnb-nf4")
    assert inflight.returncode == 0 and "in flight" in inflight.stderr
    assert Path(inflight.stdout.strip()) == Path(demo_path)
    unknown = longquant("quantize", "gptq-w3")
    assert unknown.returncode == 2 and "unknown recipe 'gptq-w3'" in " ".join(unknown.stdout.split())


@pytest.mark.parametrize("verb", ["run", "baseline", "demo", "quantize", "noise-floor", "report", "compare", "tasks",
                                  "languages", "suite", "prune-samples"])
def test_help_works_everywhere(verb):
    out = longquant(verb, "--help")
    assert out.returncode == 0 and "usage: longquant" in out.stdout


def test_top_level_help_lists_exit_codes():
    out = longquant("--help")
    assert out.returncode == 0 and "3 infrastructure error" in out.stdout
    assert longquant("frobnicate").returncode == 2
