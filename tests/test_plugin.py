"""The pytest plugin through pytester, for real: the demo model on CPU with the transformers engine.

Every inner run is a subprocess (in-process runs of a session that loads torch and tokenizers twice crashed the
interpreter in garbage collection). Cells are tiny (niah_single_1 at 1K, 6 samples: the fewest at which an all-wrong
candidate is significant at the cell's and the aggregate's shares of alpha) and share one results folder, so each model
output is computed once for the whole file and later runs exercise the plugin's logic from the resume cache.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

pytest_plugins = ["pytester"]
pytestmark = pytest.mark.model

TEST_FILE = "def test_long_context(lq_cell):\n    lq_cell.check()\n"


@pytest.fixture(autouse=True)
def not_in_ci(monkeypatch):
    """These runs update baselines on purpose (in a temporary folder); CI's refusal is tested on its own."""
    monkeypatch.delenv("CI", raising=False)


@pytest.fixture(scope="module")
def shared_results(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("results")


def write_config(pytester, demo_path, results, *, candidates: str, tasks=("niah_single_1",), buckets=("1K",),
                 languages=("en",), samples=6, extra="") -> None:
    def toml_list(xs):
        return "[" + ", ".join(f'"{x}"' for x in xs) + "]"

    pytester.makefile(".toml", longquant=f"""
reference = "demo"
engine = "hf"
device = "cpu"
tasks = {toml_list(tasks)}
buckets = {toml_list(buckets)}
languages = {toml_list(languages)}
samples = {samples}
results_dir = "{results}"
{extra}
{candidates}
""")
    pytester.makepyfile(test_gate=TEST_FILE)


SAME = '[[candidates]]\nname = "same"\nsource = "{}"\nprecision = "8-bit"\n'
DAMAGED = '[[candidates]]\nname = "damaged"\nsource = "{}"\nprecision = "4-bit"\n'


def setup_folder(pytester) -> Path:
    """Where the demo reference's baselines for the hf engine on this CPU live."""
    from longquant_checks.setups import EngineSetup

    return pytester.path / "baselines" / "SmolLM2-135M-Instruct" / EngineSetup("hf", "cpu").label()


def test_ids_not_gated_and_missing_baselines(pytester, demo_path, shared_results):
    write_config(pytester, demo_path, shared_results, candidates=SAME.format(demo_path), buckets=("1K", "16K"))
    ids = pytester.runpytest_subprocess("--collect-only", "-q").stdout.lines
    assert "test_gate.py::test_long_context[same-niah_single_1-1K-en]" in ids
    assert "test_gate.py::test_long_context[same-niah_single_1-16K-en]" in ids
    assert "test_gate.py::test_long_context[same-bucket-16K]" in ids
    assert "test_gate.py::test_long_context[same-aggregate]" in ids
    # A bucket beyond the model's length is "not gated": it fails the run unless allowed (it used to be a skip,
    # and CI went green on cells that never ran).
    result = pytester.runpytest_subprocess("-rs")
    result.assert_outcomes(failed=2, skipped=3)
    result.stdout.fnmatch_lines(["*NOT GATED (too-long*exceeds the model's max length 8192*not counted as passed*"
                                 "--lq-allow-not-gated=too-long*"])
    result.stdout.fnmatch_lines(["*no baseline for niah_single_1-1K-en on engine setup hf-cpu-*"
                                 "--lq-update-baselines=missing -k niah_single_1-1K-en*",
                                 "*not gated (too-long): same-niah_single_1-16K-en*",
                                 "*1 not gated*1 missing baselines*"])
    allowed = pytester.runpytest_subprocess("-rs", "--lq-allow-not-gated=too-long")
    allowed.assert_outcomes(failed=1, skipped=4)
    allowed.stdout.fnmatch_lines(["*not gated (too-long, allowed): same-niah_single_1-16K-en*"])


def test_update_missing_then_gate_passes_and_damaged_fails(pytester, demo_path, damaged, shared_results):
    write_config(pytester, demo_path, shared_results, candidates=SAME.format(demo_path) + DAMAGED.format(damaged))
    result = pytester.runpytest_subprocess("--lq-update-baselines=missing", "--junitxml=junit.xml")
    result.stdout.fnmatch_lines(["*+ niah_single_1-1K-en: new baseline, mean*(n=6)*", "*1 updated*"])
    baseline = setup_folder(pytester) / "niah_single_1.jsonl"
    entry = json.loads(baseline.read_text().splitlines()[0])
    assert entry["n"] == 6 and entry["bucket"] == "1K" and len(entry["samples"]) == 6
    assert entry["reference_fingerprint"] and entry["engine"]["kind"] == "hf" and entry["task_version"]
    assert entry["setup"]["engine"] == "hf" and entry["setup"]["device"] == "cpu" and entry["scorer_version"]
    assert all(s["text"] for s in entry["samples"])  # the reference's answers, for re-scoring
    # The reference answers this cell; the damaged model does not: a readable failure.
    assert entry["mean"] == 100.0
    outcomes = result.parseoutcomes()
    assert outcomes["passed"] == 2 and outcomes["failed"] == 2  # the damaged cell and its aggregate
    result.stdout.fnmatch_lines(["*damaged-niah_single_1-1K-en*", "*FAIL: cell niah_single_1-1K-en, candidate 'damaged'*",
                                 "*reference    100.0 points*", "*candidate      0.0 points*(n=6 paired samples)*",
                                 "*delta       -100.0 points*", "*tolerance   10 points*",
                                 "*per-sample outputs:*", "*[[tolerance.rules]]*"])
    junit = (pytester.path / "junit.xml").read_text()
    assert 'name="lq_delta" value="-100.0"' in junit and 'name="lq_checkpoint" value="damaged"' in junit
    # Again, without updating: nothing changes, outputs come from the resume cache.
    again = pytester.runpytest_subprocess()
    assert again.parseoutcomes()["passed"] == 2
    again.stdout.no_fnmatch_line("*engine ready*")
    again.stdout.fnmatch_lines(["*candidate \\ task*", "*damaged*-100.0!*", "*0 updated*"])
    # The run's summary.json renders to Markdown with the command line: the failing candidate first.
    md = subprocess.run([sys.executable, "-m", "longquant_checks.cli", "report", str(shared_results)],
                        capture_output=True, text=True, check=True).stdout
    assert "| damaged | **FAIL** | 2 of 2 | -100.0 points, recovery 0% |" in md and "| same | pass | 0 of 2 |" in md
    assert md.index("### damaged") < md.index("### same")
    assert "| niah_single_1-1K-en | 100.0 | 0.0 | -100.0 |" in md
    assert "reference SmolLM2-135M-Instruct, engine hf on cpu" in md and "- damaged: fingerprint `" in md
    assert "- versions: " in md and "transformers " in md


def test_ci_refuses_updates(pytester, demo_path, shared_results, monkeypatch):
    write_config(pytester, demo_path, shared_results, candidates=SAME.format(demo_path))
    monkeypatch.setenv("CI", "true")
    result = pytester.runpytest_subprocess("--lq-update-baselines=missing")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*refused under CI=true*--lq-allow-ci-update*"])


def test_mismatch_is_named_and_failed_mode_refreshes(pytester, demo_path, shared_results):
    write_config(pytester, demo_path, shared_results, candidates=SAME.format(demo_path))
    pytester.runpytest_subprocess("--lq-update-baselines=missing").assert_outcomes(passed=2)
    baseline = setup_folder(pytester) / "niah_single_1.jsonl"
    entry = json.loads(baseline.read_text())
    entry["samples"][0]["prompt_sha256"] = "0" * 64
    entry["task_version"] = "0"
    baseline.write_text(json.dumps(entry) + "\n")
    result = pytester.runpytest_subprocess()
    result.assert_outcomes(failed=1, skipped=1)
    result.stdout.fnmatch_lines(["*task generator changed (baseline v0*1 of 6 prompts differ*"
                                 "--lq-update-baselines=failed -k niah_single_1-1K-en*"])
    fixed = pytester.runpytest_subprocess("--lq-update-baselines=failed")
    fixed.assert_outcomes(passed=2)
    fixed.stdout.fnmatch_lines(["*~ niah_single_1-1K-en: mean 100.0 -> 100.0*1 prompt(s) changed*"])
    # `all` refreshes every selected cell even when nothing is wrong.
    pytester.runpytest_subprocess("--lq-update-baselines=all").stdout.fnmatch_lines(["*~ niah_single_1-1K-en*", "*1 updated*"])


def test_prune_needs_unfiltered_run_and_removes_unused(pytester, demo_path, shared_results):
    write_config(pytester, demo_path, shared_results, candidates=SAME.format(demo_path))
    pytester.runpytest_subprocess("--lq-update-baselines=missing").assert_outcomes(passed=2)
    baseline = setup_folder(pytester) / "niah_single_1.jsonl"
    entry = json.loads(baseline.read_text())
    baseline.write_text(baseline.read_text() + json.dumps({**entry, "bucket": "2K"}) + "\n")
    pytester.runpytest_subprocess().stdout.fnmatch_lines(["*1 unused*"])
    filtered = pytester.runpytest_subprocess("--lq-prune-baselines", "-k", "same")
    assert filtered.ret == pytest.ExitCode.USAGE_ERROR
    filtered.stderr.fnmatch_lines(["*needs an unfiltered run (drop -k)*"])
    pytester.runpytest_subprocess("--lq-prune-baselines").stdout.fnmatch_lines(["*pruned 1 unused baseline entries: niah_single_1-2K-en*"])
    assert len(baseline.read_text().splitlines()) == 1


def test_bad_config_names_key_value_and_accepted(pytester, demo_path, shared_results):
    write_config(pytester, demo_path, shared_results,
                 candidates='[[candidates]]\nname = "x"\nrecipe = "gptq-w3"\n', extra='mode = "fast"')
    result = pytester.runpytest_subprocess()
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    # Every problem at once, each naming the key, the accepted values and the bad value.
    errors = result.stderr.str()
    assert "2 problem(s)" in errors
    assert "mode: Input should be 'default', 'strict' or 'point' (got 'fast')" in errors
    assert "candidates['x'].recipe: unknown recipe; accepted: bnb-int8" in errors and "(got 'gptq-w3')" in errors


def test_broken_candidate_is_one_error_and_session_goes_on(pytester, demo_path, shared_results, tmp_path):
    (tmp_path / "pickled").mkdir()
    (tmp_path / "pickled" / "config.json").write_text('{"model_type": "llama"}')
    (tmp_path / "pickled" / "pytorch_model.bin").write_bytes(b"\x80")
    write_config(pytester, demo_path, shared_results, candidates=(
        SAME.format(demo_path) + f'[[candidates]]\nname = "missing"\nsource = "{tmp_path}/nowhere"\n'
        f'[[candidates]]\nname = "pickled"\nsource = "{tmp_path}/pickled"\n'))
    result = pytester.runpytest_subprocess("--lq-update-baselines=missing")
    result.stdout.fnmatch_lines(["*missing*does not exist*fix the path*", "*pickled*safetensors only*"])
    outcomes = result.parseoutcomes()
    assert outcomes["passed"] == 2 and outcomes["failed"] == 2


def test_xdist_groups_each_checkpoint_on_one_worker(pytester, demo_path, damaged, shared_results):
    write_config(pytester, demo_path, shared_results, candidates=SAME.format(demo_path) + DAMAGED.format(damaged))
    pytester.runpytest_subprocess("--lq-update-baselines=missing")
    result = pytester.runpytest_subprocess("-n", "2", "-v")
    workers: dict[str, set] = {}
    for line in result.stdout.lines:
        if line.startswith("[gw") and "test_long_context[" in line:
            name = line.split("test_long_context[")[1].split("-")[0]
            workers.setdefault(name, set()).add(line.split("]")[0])
    assert set(workers) == {"same", "damaged"} and all(len(w) == 1 for w in workers.values()), workers
    result.stdout.fnmatch_lines(["*longquant summary*", "*damaged*-100.0!*"])


def _default_sigint() -> None:
    """In the child: Ctrl-C raises KeyboardInterrupt again. A process started in the background by a shell without
    job control (how CI scripts run) inherits SIGINT *ignored*, and Python then never installs its handler: the
    interrupted run used to finish regardless, in fresh-clone CI runs only."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def test_interrupted_run_resumes(pytester, demo_path, shared_results, tmp_path):
    """Ctrl-C after the first finished cell; the next run reuses it and runs only what is missing."""
    results = tmp_path / "results"
    write_config(pytester, demo_path, results, candidates=SAME.format(demo_path), languages=("en", "de"),
                 samples=2)
    # The run sends the Ctrl-C to itself right after it stores its first cell: polling for the file from outside
    # raced with the next cells, which stream together with the first.
    pytester.makeconftest("""
import os, signal
from longquant_checks.results import ResultStore

_save = ResultStore.save

def _save_then_interrupt(self, result):
    path = _save(self, result)
    if os.environ.get("LQ_TEST_INTERRUPT") == "1":
        os.kill(os.getpid(), signal.SIGINT)
    return path

ResultStore.save = _save_then_interrupt
""")
    env = {**os.environ, "CI": ""}
    cmd = [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "--lq-update-baselines=missing", "-q"]
    interrupted = subprocess.run(cmd, cwd=pytester.path, env={**env, "LQ_TEST_INTERRUPT": "1"}, capture_output=True,
                                 text=True, timeout=600, preexec_fn=_default_sigint)
    assert interrupted.returncode == 2, interrupted.stdout[-3000:]  # pytest's exit status for an interrupted run
    first = {p: p.stat().st_mtime_ns for p in results.glob("cells/*/*.jsonl")}
    assert len(first) == 1, "interrupt after exactly the first finished cell"
    done = subprocess.run(cmd, cwd=pytester.path, env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout[-3000:]
    after = {p: p.stat().st_mtime_ns for p in results.glob("cells/*/*.jsonl")}
    assert len(after) == 4  # reference and candidate, two languages
    for path, mtime in first.items():
        assert after[path] == mtime, f"{path.name} was run again instead of reused"


def test_checkpoint_engine_and_reference_fixtures(pytester, demo_path, shared_results):
    """Users can write their own tests against each candidate: `lq_checkpoint` is parametrized over them."""
    write_config(pytester, demo_path, shared_results, candidates=SAME.format(demo_path) + '[[candidates]]\n'
                 'name = "int8"\nrecipe = "bnb-int8"\n')
    pytester.makepyfile(test_fixtures="""
def test_engine(lq_checkpoint, lq_engine, lq_reference):
    assert lq_reference.precision == "16-bit"
    assert lq_checkpoint.precision == "8-bit"
    assert lq_engine.max_model_len == 8192
    assert lq_engine.info.name == "hf"
""")
    result = pytester.runpytest_subprocess("test_fixtures.py", "-v")
    result.assert_outcomes(passed=2)
    result.stdout.fnmatch_lines(["*test_engine?same? PASSED*", "*test_engine?int8? PASSED*"])


def _printed(stdout: str, prefix: str) -> list[str]:
    """The pytest arguments of the first command printed after `prefix` (as the user would copy it)."""
    import shlex

    line = next(line for line in stdout.splitlines() if prefix in line)
    command = line.split(prefix, 1)[1].strip().strip("`")
    if "`" in command:
        command = command.split("`", 1)[0]
    args = shlex.split(command)
    assert args[:3] == ["python", "-m", "pytest"], command
    return args[3:]


def test_printed_commands_do_what_they_say(pytester, demo_path, damaged, shared_results):
    """The refresh command under a failing cell re-runs the reference (not served from the resume cache) and
    rewrites that cell's baseline; the TOML printed to accept the drop makes that cell pass."""
    write_config(pytester, demo_path, shared_results, candidates=SAME.format(demo_path) + DAMAGED.format(damaged))
    missing = pytester.runpytest_subprocess()
    create = _printed(missing.stdout.str(), "create it with ")
    assert "--lq-update-baselines=missing" in create and "niah_single_1-1K-en" in create
    created = pytester.runpytest_subprocess(*create)
    created.stdout.fnmatch_lines(["*+ niah_single_1-1K-en: new baseline*", "*1 updated*"])
    failing = pytester.runpytest_subprocess()
    out = failing.stdout.str()
    refresh = _printed(out, "overwrite its baseline: ")
    refreshed = pytester.runpytest_subprocess(*refresh)
    # It ran the reference's model again, though every cell was in the resume cache.
    refreshed.stdout.fnmatch_lines(["*reference: hf engine ready*", "*~ niah_single_1-1K-en: mean 100.0 -> 100.0*",
                                    "*1 updated*"])
    snippet = out.split("to accept this drop for this cell, add to the config:", 1)[1].split("if the reference", 1)[0]
    rule = "\n".join(line.strip() for line in snippet.strip().splitlines() if line.strip())
    config = pytester.path / "longquant.toml"
    config.write_text(config.read_text() + "\n" + rule + "\n")
    accepted = pytester.runpytest_subprocess("-k", "damaged-niah_single_1-1K-en")
    accepted.assert_outcomes(passed=1)


def test_baseline_of_another_setup_is_refused_with_field_values_and_command(pytester, demo_path, shared_results):
    write_config(pytester, demo_path, shared_results, candidates=SAME.format(demo_path))
    pytester.runpytest_subprocess("--lq-update-baselines=missing").assert_outcomes(passed=2)
    baseline = setup_folder(pytester) / "niah_single_1.jsonl"
    entry = json.loads(baseline.read_text())
    current = entry["setup"]["dtype"]
    entry["setup"]["dtype"] = "float16"
    baseline.write_text(json.dumps(entry) + "\n")
    refused = pytester.runpytest_subprocess()
    refused.assert_outcomes(failed=1, skipped=1)
    refused.stdout.fnmatch_lines([f"*engine setup dtype: 'float16' in the baseline, '{current}' in this run*"
                                  "--lq-update-baselines=failed -k niah_single_1-1K-en*"])
    fixed = pytester.runpytest_subprocess(*_printed(refused.stdout.str(), "Refresh it deliberately with "))
    fixed.assert_outcomes(passed=1)  # the cell it selects (-k niah_single_1-1K-en), with its baseline rewritten
    fixed.stdout.fnmatch_lines(["*~ niah_single_1-1K-en: mean 100.0 -> 100.0*"])
    assert json.loads(baseline.read_text())["setup"]["dtype"] == current


def test_candidate_on_another_engine_meets_the_reference_on_that_engine(pytester, demo_path, shared_results):
    """README's nf4 example in miniature: a candidate on vLLM is never compared with the reference's hf numbers."""
    write_config(pytester, demo_path, shared_results, candidates=SAME.format(demo_path)
                 + f'[[candidates]]\nname = "on_vllm"\nsource = "{demo_path}"\nprecision = "8-bit"\nengine = "vllm"\n')
    pytester.runpytest_subprocess("--lq-update-baselines=missing", "-k", "same").assert_outcomes(passed=2)
    result = pytester.runpytest_subprocess()
    result.assert_outcomes(passed=2, failed=1, skipped=1)
    result.stdout.fnmatch_lines(["*no baseline for niah_single_1-1K-en on engine setup vllm-cpu-*"])
    made = pytester.runpytest_subprocess("--lq-update-baselines=missing")
    made.assert_outcomes(passed=4)
    vllm_folder = next(p for p in setup_folder(pytester).parent.iterdir() if p.name.startswith("vllm-cpu-"))
    entry = json.loads((vllm_folder / "niah_single_1.jsonl").read_text())
    assert entry["setup"]["engine"] == "vllm" and entry["engine"]["kind"] == "vllm"


def test_engine_that_cannot_start_fails_once_with_its_cause(pytester, demo_path, shared_results, tmp_path):
    """A checkpoint whose weights do not match its config: every cell fails with transformers' own words, after
    one attempt to load it (not one per cell)."""
    broken = tmp_path / "broken"
    broken.mkdir()
    for f in Path(demo_path).iterdir():
        if f.suffix == ".safetensors":
            (broken / f.name).symlink_to(f)
        elif f.is_file():
            (broken / f.name).write_bytes(f.read_bytes())
    config = json.loads((broken / "config.json").read_text())
    config["intermediate_size"] += 64
    (broken / "config.json").write_text(json.dumps(config))
    write_config(pytester, demo_path, shared_results, languages=("en", "de"),
                 candidates=f'[[candidates]]\nname = "broken"\nsource = "{broken}"\nprecision = "8-bit"\n')
    result = pytester.runpytest_subprocess("--lq-update-baselines=missing")
    result.assert_outcomes(failed=2, skipped=3)
    out = result.stdout.str()
    assert out.count("broken: hf engine failed to start") == 1, out[-3000:]
    assert out.count("the hf engine failed to start (tried once") >= 2
    assert "out of memory" not in out.lower()
    # The library's own exception, named, after the fixed preamble.
    result.stdout.fnmatch_lines(["*failed to start (tried once; every cell of this checkpoint reports this): *"])


def test_divergence_signal_beside_accuracy(pytester, demo_path, damaged, tmp_path):
    """[divergence] on: the baseline run keeps the reference's token traces; each candidate's cells, languages,
    buckets and aggregate get a KL test beside the accuracy ones, and each task a length trend of both. A
    bit-identical copy passes every divergence test at ~0 KL; a damaged copy fails them. A baseline without traces
    is refused, naming the refresh."""
    results = tmp_path / "results"
    candidates = SAME.format(demo_path) + DAMAGED.format(damaged)
    write_config(pytester, demo_path, results, candidates=candidates, buckets=("1K", "2K"), samples=4,
                 extra="divergence = { enabled = true }")
    ids = pytester.runpytest_subprocess("--collect-only", "-q").stdout.lines
    for test in ("same-kl-niah_single_1-1K-en", "same-kl-bucket-2K", "same-kl-aggregate", "same-kl-trend-niah_single_1",
                 "same-trend-niah_single_1", "damaged-kl-niah_single_1-2K-en"):
        assert f"test_gate.py::test_long_context[{test}]" in ids, (test, ids)
    result = pytester.runpytest_subprocess("--lq-update-baselines=missing", "--lq-report=summary.json", "-rf")
    rows = {f"{r['lq_checkpoint']}-{r['lq_signal']}-{r['lq_cell']}": r
            for r in json.loads((pytester.path / "summary.json").read_text())["tests"]}
    entry = json.loads((setup_folder(pytester) / "niah_single_1.jsonl").read_text().splitlines()[0])
    assert all(s["trace"]["k"] == 20 and s["trace"]["n"] >= 1 for s in entry["samples"])
    same = [r for k, r in rows.items() if k.startswith("same-kl-")]
    assert same and all(r["lq_status"] == "pass" for r in same)
    assert all(r["lq_candidate"] < 1e-3 for r in same if r["lq_level"] != "trend"), same
    damaged_kl = [r for k, r in rows.items() if k.startswith("damaged-kl-") and r["lq_level"] != "trend"]
    assert damaged_kl and all(r["lq_status"] == "fail" and r["lq_candidate"] > 0.1 for r in damaged_kl), damaged_kl
    assert rows["damaged-kl-niah_single_1-1K-en"]["lq_unit"] == "nats/token KL"
    result.stdout.fnmatch_lines(["*FAIL: cell niah_single_1-1K-en, kl, candidate 'damaged'*"])
    # Baselines made without traces cannot feed the signal: refused, with the refresh that fixes it.
    folder = setup_folder(pytester)
    stripped = [json.loads(line) for line in (folder / "niah_single_1.jsonl").read_text().splitlines()]
    for e in stripped:
        for s in e["samples"]:
            s.pop("trace")
    (folder / "niah_single_1.jsonl").write_text("".join(json.dumps(e) + "\n" for e in stripped))
    refused = pytester.runpytest_subprocess("-k", "same-kl-niah_single_1-1K-en")
    refused.stdout.fnmatch_lines(["*keeps no token traces*--lq-update-baselines=failed*"])
