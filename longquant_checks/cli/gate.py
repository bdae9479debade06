"""`longquant run`, `baseline`, `demo` (the gate through pytest, in a subprocess) and `quantize`.

The gate is the pytest plugin; these verbs only build its command line and turn its outcome into the documented exit
codes (docs/cli.md), read from the run's own JSON summary (`--lq-report`), never guessed from pytest's exit status
alone.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from pathlib import Path

from ..errors import LongquantError
from .codes import CONFIG_ERROR, INFRASTRUCTURE_ERROR, INTERRUPTED, PASSED, REGRESSED


class CliError(LongquantError):
    """A usage or config error of the command line (exit 2)."""


def demo_config() -> Path:
    """The embedded default gate: fixtures/longquant.toml of the source tree this package runs from."""
    path = Path(__file__).resolve().parents[2] / "fixtures" / "longquant.toml"
    if not path.is_file():
        raise CliError(f"the embedded demo config is not here ({path}): `longquant demo` runs from a checkout of "
                       "longquant-checks installed with `pip install -e .`; elsewhere use `longquant run --config PATH`")
    return path


def _config_path(given: str | None) -> Path:
    from ..config import find_config

    path = Path(given) if given else find_config(Path.cwd())
    if path is None:
        raise CliError("no config found: pass --config PATH, or run where longquant.toml (or a pyproject.toml with "
                       "[tool.longquant]) is")
    if not path.is_file():
        raise CliError(f"--config {path}: no such file")
    return path.resolve()


def gate_command(config: Path, pytest_args: list[str], report: Path, update: str | None = None,
                 workers: str | None = None) -> list[str]:
    from ..plugin import plugin_args

    command = [sys.executable, "-m", "pytest", str(Path(__file__).resolve().parents[1] / "gate_test.py"),
               f"--lq-config={config}", f"--lq-report={report}", "-p", "no:cacheprovider", *plugin_args()]
    if update:
        command.append(f"--lq-update-baselines={update}")
    if workers:
        command += ["-n", workers]
    return command + pytest_args


def exit_code(pytest_status: int, summary: dict | None) -> int:
    """pytest's exit status and the run's summary -> the documented exit code: infrastructure errors (an engine that
    crashed or could not start) before regressions (fail or not gated), before missing baselines (a usage error)."""
    # pytest's 2 is "interrupted": a collection error (a bad config found while collecting) or a KeyboardInterrupt
    # inside pytest; a Ctrl-C at this command is caught by run_gate and is 130.
    if pytest_status in (2, 4, 5):  # a usage or collection error, or a config that selects no test
        return CONFIG_ERROR
    if pytest_status == 3:
        return INFRASTRUCTURE_ERROR
    counts = (summary or {}).get("counts", {})
    errors, missing = counts.get("error", 0), counts.get("missing baselines", 0)
    if errors > missing:
        return INFRASTRUCTURE_ERROR
    if counts.get("regressed", 0) or counts.get("not gated", 0) > sum(
            1 for ng in (summary or {}).get("not_gated", []) if ng.get("allowed")):
        return REGRESSED
    if missing:
        return CONFIG_ERROR
    if pytest_status == 1:  # a failure the summary does not explain (e.g. a user's own test): not a pass
        return REGRESSED
    if summary is None:  # pytest passed, yet no gate test reported: nothing was gated
        return CONFIG_ERROR
    return PASSED


def run_gate(config: Path, pytest_args: list[str], update: str | None = None, workers: str | None = None) -> int:
    with tempfile.TemporaryDirectory(prefix="longquant-run-") as tmp:
        report = Path(tmp) / "summary.json"
        command = gate_command(config, pytest_args, report, update, workers)
        child = subprocess.Popen(command, cwd=config.parent)
        try:
            status = child.wait()
        except KeyboardInterrupt:  # the child got the same Ctrl-C: let it stop cleanly (finished cells are kept)
            try:
                child.wait(60)
            except (subprocess.TimeoutExpired, KeyboardInterrupt):
                child.kill()
            print("longquant: exit 130 (interrupted)", file=sys.stderr)
            return INTERRUPTED
        summary = None
        if report.is_file():
            try:
                summary = json.loads(report.read_text(encoding="utf-8"))
            except ValueError:
                summary = None
    code = exit_code(status, summary)
    if status == 5 or (status == 0 and summary is None):
        print(f"longquant: {config} selects no test (pytest exit {status}): check tasks, buckets, languages, candidates and "
              "any -k / -m filter", file=sys.stderr)
    print(f"longquant: exit {code} ({_MEANING[code]})", file=sys.stderr)
    return code


_MEANING = {PASSED: "passed", REGRESSED: "regressions or not-gated cells", CONFIG_ERROR: "usage or config error",
            INFRASTRUCTURE_ERROR: "infrastructure error", INTERRUPTED: "interrupted"}


def quantize(recipe: str | None, model: str, config: str | None, candidate: str | None) -> int:
    """A recipe's checkpoint, produced into the cache (or found there): its path on stdout."""
    from ..checkpoints.recipes import get_recipe
    from ..checkpoints.resolve import resolve

    if candidate:
        from ..config import load_config
        from ..run import GateRun

        run = GateRun(load_config(_config_path(config)))
        ckpt = run.checkpoint(candidate)
    else:
        if not recipe:
            raise CliError("quantize needs a RECIPE (e.g. gptq-w4a16; `longquant quantize --list`), or --candidate "
                           "NAME of a config")
        from ..checkpoints.demo import resolve_model_source

        spec = get_recipe(recipe)  # an unknown recipe is named before anything loads
        ckpt = resolve(recipe, recipe=recipe, reference=resolve_model_source(model),
                       engine="vllm" if spec.params.get("method") == "vllm" else "hf")
    if ckpt.recipe:
        print(f"recipe {ckpt.recipe} is applied in flight while loading: nothing to produce; the engine loads "
              f"{ckpt.path}", file=sys.stderr)
    print(ckpt.path)
    return PASSED


def list_recipes() -> int:
    from ..checkpoints.recipes import RECIPES

    for name, spec in RECIPES.items():
        print(f"{name:<16} {spec.precision:<6} {spec.kind:<13} {spec.description}")
    return PASSED



def noise_floor(config: Path) -> int:
    """The divergence signal's noise floor for a config's reference setup: printed, and stored beside its baselines."""
    from ..config import load_config
    from ..run import GateRun

    run = GateRun(load_config(config), progress=lambda msg: print(f"longquant: {msg}", file=sys.stderr))
    try:
        path, floor = run.measure_noise_floor()
    finally:
        run.close()
    for signal, stats in sorted(floor.signals.items()):
        print(f"{signal:<5} mean {stats['mean']:.3g}  upper 95% {stats['upper']:.3g}  max {stats['max']:.3g}  "
              f"({floor.cells} cells, {floor.samples} samples)")
    print(f"stored in {path}")
    return PASSED
