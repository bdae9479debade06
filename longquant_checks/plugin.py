"""The pytest plugin (registered under `pytest11`): options, parametrization, fixtures, summary.

The only module that knows pytest. A test asks for `lq_cell` and is parametrized over
candidate x task x bucket x language from the config (ids `candidate-task-bucket-lang`, plus one
`candidate-aggregate` test per candidate):

    def test_long_context(lq_cell):
        lq_cell.check()

Tests are grouped per checkpoint (`xdist_group`), and `-n N` uses `--dist loadgroup`, so each
worker loads a checkpoint once and decides its cells together.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys
from collections import defaultdict
from pathlib import Path
from typing import Any

import pytest

from .config import Config, ConfigError, find_config, load_config
from .engines import gpus_needed
from .errors import LongquantError
from .gpus import auto_workers, slices
from .plan import NOT_GATED_REASONS
from .run import REFERENCE, UPDATE_MODES, Case, GateRun, Outcome

_RUN = pytest.StashKey[GateRun]()
_PROPS = pytest.StashKey[list]()
_ROWS = pytest.StashKey["_Rows"]()
_HEADER = pytest.StashKey[bool]()
_POLLER = pytest.StashKey[Any]()
_PREFIX = "lq_"


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("longquant", "longquant-checks: gate quantized checkpoints on long inputs")
    group.addoption("--lq-config", help="config file: longquant.toml or a pyproject.toml with [tool.longquant] "
                                        "(default: ini lq_config, else ./longquant.toml, else ./pyproject.toml)")
    group.addoption("--lq-engine", choices=["hf", "vllm", "openai"], help="engine for every checkpoint (overrides config)")
    group.addoption("--lq-limit", type=int, help="use only the first N samples of each cell (quick runs; no baseline updates)")
    group.addoption("--lq-seed", type=int, help="sample seed (overrides config; baselines must match it)")
    group.addoption("--lq-mode", choices=["default", "strict", "point"], help="gate mode (overrides config)")
    group.addoption("--lq-tolerance", action="append", default=[], metavar="CLASS=POINTS",
                    help="per-cell tolerance override, e.g. 4-bit=8 (repeatable)")
    group.addoption("--lq-baseline-dir", help="baseline folder (overrides config)")
    group.addoption("--lq-report", help="also write the run's JSON summary to this path")
    group.addoption("--lq-no-reports", action="store_true",
                    help="do not write report.md, report.html and report.json into the results folder")
    group.addoption("--lq-update-baselines", choices=list(UPDATE_MODES),
                    help="re-run the reference and rewrite baselines: missing | failed (missing or mismatched) | all "
                         "(selected tests only)")
    group.addoption("--lq-allow-ci-update", action="store_true", help="allow baseline updates when CI=true")
    group.addoption("--lq-allow-not-gated", action="append", default=[], metavar="REASON[,REASON]",
                    help="let planned cases that cannot run here skip instead of failing the session, for these "
                         f"reasons: {', '.join(NOT_GATED_REASONS)} (repeatable)")
    group.addoption("--lq-prune-baselines", action="store_true",
                    help="delete baseline entries not in the config's plan (only on an unfiltered run)")
    for key, help_ in (("lq_config", "longquant config file"), ("lq_engine", "longquant engine"),
                       ("lq_mode", "longquant gate mode"), ("lq_baseline_dir", "longquant baseline folder"),
                       ("lq_report", "longquant JSON report path")):
        parser.addini(key, help_, default=None)


def _is_worker(config: pytest.Config) -> bool:
    """An xdist worker of this session. Not read from PYTEST_XDIST_WORKER: a pytest started from inside a worker
    (pytester, a subprocess) inherits that variable but is a session of its own."""
    return hasattr(config, "workerinput")


def _opt(config: pytest.Config, name: str) -> Any:
    value = config.getoption(f"--lq-{name.replace('_', '-')}")
    if value in (None, []) and name in ("config", "engine", "mode", "baseline_dir", "report"):
        value = config.getini(f"lq_{name}")
    return value


@pytest.hookimpl(tryfirst=True)
def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "longquant: a longquant gate test (added automatically)")
    config.stash[_PROPS] = []
    config.stash[_ROWS] = _Rows()
    config.pluginmanager.register(config.stash[_ROWS], "longquant-rows")
    update = config.getoption("--lq-update-baselines")
    if update and os.environ.get("CI") == "true" and not config.getoption("--lq-allow-ci-update"):
        raise pytest.UsageError("baseline updates are refused under CI=true: baselines change deliberately, on a "
                                "developer's machine. Pass --lq-allow-ci-update if this CI job is meant to write them")
    if config.getoption("--lq-prune-baselines"):
        filtered = [name for name, on in (("-k", config.option.keyword), ("-m", config.option.markexpr),
                                          ("--lq-limit", config.getoption("--lq-limit")),
                                          ("node ids", any("::" in a for a in config.args))) if on]
        if filtered:
            raise pytest.UsageError(f"--lq-prune-baselines needs an unfiltered run (drop {', '.join(filtered)}): "
                                    "a filtered run would delete baselines of cells it did not select")
    _refuse_xdist_with_ray(config)
    # Under xdist: one checkpoint per worker group; a GPU slice per worker, set before CUDA initialises.
    if getattr(config.option, "dist", None) == "load" and getattr(config.option, "numprocesses", None):
        config.option.dist = "loadgroup"
    if getattr(config.option, "numprocesses", None) and not _is_worker(config):
        _start_poller(config)
    if getattr(config, "workerinput", {}).get("lq_loadgroup"):
        config.option.loadgroup = True  # workers read --dist from the command line, not from the controller
    if _is_worker(config):
        info = config.workerinput
        _pin_worker_resources(config, int(str(info["workerid"]).removeprefix("gw")), int(info.get("workercount", 1)))


@pytest.hookimpl(optionalhook=True)
def pytest_configure_node(node) -> None:
    """xdist controller, per worker: a worker tags tests with their xdist_group only if it knows it is loadgroup."""
    if node.config.getvalue("dist") == "loadgroup":
        node.workerinput["lq_loadgroup"] = True
    found = node.config.stash.get(_POLLER, None)
    if found is not None:
        node.workerinput["lq_progress_dir"] = str(found[0])


@pytest.hookimpl(tryfirst=True, optionalhook=True)
def pytest_xdist_make_scheduler(config: pytest.Config, log):
    """loadgroup that groups gate tests by checkpoint from their ids (`candidate-task-bucket-lang`; candidate names
    have no "-"), not from the `@group` suffix workers append to node ids: with pytest 9.2 structured node ids that
    suffix no longer takes effect and loadgroup silently degrades to load (pytest-xdist#1386). Other tests keep
    xdist's own grouping."""
    if config.getvalue("dist") != "loadgroup":
        return None
    # The controller collects nothing: find the config from the first path argument (e.g. `pytest fixtures -n 2`).
    paths = [Path(arg.split("::")[0]) for arg in config.args]
    near = next((p if p.is_dir() else p.parent for p in paths if p.exists()), None)
    try:
        names = set(gate_run(config, near).checkpoint_names())
        from xdist.scheduler import LoadGroupScheduling
    except (pytest.UsageError, LongquantError, ImportError):
        return None  # no gate config here (or another xdist): xdist's own scheduler

    class CheckpointGroups(LoadGroupScheduling):
        def _split_scope(self, nodeid: str) -> str:
            params = nodeid[nodeid.find("[") + 1:nodeid.rfind("]")] if "[" in nodeid else ""
            checkpoint = params.split("-", 1)[0]
            return f"longquant:{checkpoint}" if checkpoint in names else super()._split_scope(nodeid)

    return CheckpointGroups(config, log)


def _listed_gpus() -> list[str]:
    """The GPUs this process may use, without initialising CUDA here (a worker pins its slice before torch does)."""
    devices = os.environ.get("CUDA_VISIBLE_DEVICES")
    if devices is not None:
        return [d.strip() for d in devices.split(",") if d.strip()]
    if not shutil.which("nvidia-smi"):
        return []
    try:
        listed = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=20).stdout
    except (OSError, subprocess.SubprocessError):
        return []
    return [str(i) for i, line in enumerate(line for line in listed.splitlines() if line.startswith("GPU"))]


def _gate_config(config: pytest.Config) -> Config | None:
    path = _config_path(config)
    if path is None:
        return None
    try:
        return load_config(path)
    except ConfigError:
        return None  # reported when the session starts


def _checkpoint_settings(cfg: Config) -> list[tuple[str, str, dict]]:
    """(name, engine, engine_args: shared + its own) for the reference and every candidate, from the config alone."""
    g = cfg.gate
    every = [("the reference", g.engine, {**g.engine_args, **g.reference.engine_args})]
    return every + [(repr(c.name), c.engine or g.engine, {**g.engine_args, **c.engine_args}) for c in g.candidates]


def _refuse_xdist_with_ray(config: pytest.Config) -> None:
    """Several hosts: one pytest process on the Ray head drives vLLM's Ray executor; xdist workers would each start
    their own engine across the same cluster."""
    workers = getattr(config.option, "numprocesses", None)
    if not workers or _is_worker(config):
        return
    cfg = _gate_config(config)
    if cfg is None:
        return
    ray = [name for name, _, args in _checkpoint_settings(cfg) if args.get("distributed_executor_backend") == "ray"]
    if ray:
        raise pytest.UsageError(
            f"longquant: {', '.join(ray)} use distributed_executor_backend = \"ray\" (several hosts): run pytest once, "
            f"on the Ray head, without -n (xdist workers would each start an engine across the same cluster; "
            f"docs/multi-host.md)")


def _widest_checkpoint(config: pytest.Config) -> int | None:
    """GPUs the widest vLLM checkpoint of the gate config spans (None: no GPU plan here). Read from the config
    alone: a worker must not touch CUDA before its slice is set."""
    cfg = _gate_config(config)
    if cfg is None:
        return None
    g = cfg.gate
    if not (g.device.startswith("cuda") or (g.device == "auto" and _listed_gpus())):
        return None
    widths = []
    for _, engine, args in _checkpoint_settings(cfg):
        try:
            widths.append(gpus_needed(args) if engine == "vllm" else 1)
        except LongquantError:
            widths.append(1)  # the session start reports the bad value
    return max(widths)


@pytest.hookimpl(optionalhook=True)  # an xdist hook: unknown (and refused) where xdist is not installed
def pytest_xdist_auto_num_workers(config: pytest.Config) -> int | None:
    """`-n auto` on a GPU plan: GPUs // the widest checkpoint's GPUs (not the CPU count)."""
    widest = _widest_checkpoint(config)
    devices = _listed_gpus()
    if widest is None or not devices:
        return None
    try:
        return auto_workers(devices, widest)
    except LongquantError as exc:
        raise pytest.UsageError(f"longquant: {exc}") from None


def _pin_worker_resources(config: pytest.Config, index: int, count: int) -> None:
    devices = _listed_gpus()
    widest = _widest_checkpoint(config) if devices else None
    if widest is not None:  # a GPU plan: every worker gets a full slice of the widest checkpoint, or a clear error
        try:
            mine = slices(devices, widest, count)[index]
        except LongquantError as exc:
            raise pytest.UsageError(f"longquant: {exc}") from None
        os.environ["CUDA_VISIBLE_DEVICES"] = ",".join(mine)
    elif devices:  # GPUs, but no GPU plan: an even share each (shared when there are more workers than GPUs)
        per = max(1, len(devices) // count)
        os.environ["CUDA_VISIBLE_DEVICES"] = ",".join(devices[index * per:(index + 1) * per]) or devices[index % len(devices)]
    else:  # CPU: split the cores so workers don't oversubscribe them
        threads = max(1, (os.cpu_count() or 1) // count)
        os.environ.setdefault("OMP_NUM_THREADS", str(threads))
        if "torch" in sys.modules:
            sys.modules["torch"].set_num_threads(threads)


def _config_path(config: pytest.Config, near: Path | None = None) -> Path | None:
    """--lq-config, else ini lq_config, else longquant.toml next to the tests, else in the rootdir / cwd."""
    given = _opt(config, "config")
    if given:
        path = Path(given)
        return path if path.is_absolute() else Path(config.rootpath) / path
    return ((near and find_config(near)) or find_config(Path(config.rootpath)) or find_config(Path.cwd()))


def _tolerances(config: pytest.Config) -> dict[str, float]:
    out = {}
    for item in config.getoption("--lq-tolerance"):
        name, _, value = item.partition("=")
        try:
            out[name.strip()] = float(value)
        except ValueError:
            raise pytest.UsageError(f"--lq-tolerance {item!r}: expected CLASS=POINTS, e.g. 4-bit=8") from None
        if name.strip() not in ("16-bit", "8-bit", "4-bit"):
            raise pytest.UsageError(f"--lq-tolerance {item!r}: class must be 16-bit, 8-bit or 4-bit")
    return out


def gate_run(config: pytest.Config, near: Path | None = None) -> GateRun:
    """The session's GateRun, made on first use (so projects without a longquant config pay nothing)."""
    if _RUN not in config.stash:
        path = _config_path(config, near)
        if path is None:
            raise pytest.UsageError("longquant: no config found; pass --lq-config PATH, set `lq_config` in the pytest "
                                    "ini, or create longquant.toml (see docs/config.md)")
        try:
            cfg: Config = load_config(path)
        except ConfigError as exc:
            raise pytest.UsageError(str(exc)) from None
        progress = _progress(config)
        baseline_dir = _opt(config, "baseline_dir")
        allowed = [r.strip() for item in config.getoption("--lq-allow-not-gated") for r in item.split(",") if r.strip()]
        try:
            config.stash[_RUN] = GateRun(
                cfg, engine=_opt(config, "engine"), limit=config.getoption("--lq-limit"),
                seed=config.getoption("--lq-seed"), mode=_opt(config, "mode"), tolerances=_tolerances(config),
                baseline_dir=Path(config.rootpath) / baseline_dir if baseline_dir else None,
                update=config.getoption("--lq-update-baselines"), progress=progress, allow_not_gated=allowed,
                invocation=[str(a) for a in config.invocation_params.args])
        except LongquantError as exc:  # a bad engine setting or not-gated reason: before anything runs
            raise pytest.UsageError(str(exc)) from None
    return config.stash[_RUN]


def _progress(config: pytest.Config):
    """Where this process's run events go: a worker's file for the controller; else a live rich board on a terminal,
    or one line per finished cell under CI or without a terminal."""
    from .progress import Board, Messages, WorkerFile, quiet

    if _is_worker(config):
        folder = config.workerinput.get("lq_progress_dir")
        worker = str(config.workerinput.get("workerid", "gw"))
        return WorkerFile(Path(folder) / f"{worker}.json", worker) if folder else None
    reporter = config.pluginmanager.get_plugin("terminalreporter")
    if reporter is None:
        return None
    capture = config.pluginmanager.get_plugin("capturemanager")

    def guard():  # runs inside tests (models load lazily there): without this, output capture would swallow it
        return capture.global_and_fixture_disabled() if capture else contextlib.nullcontext()

    if quiet() or not getattr(reporter, "isatty", False):
        def write(msg: str) -> None:
            with guard():
                reporter.write_line(f"longquant: {msg}")

        return Messages(write)
    from rich.console import Console

    return Board(Console(force_terminal=True), guard=guard)


def _start_poller(config: pytest.Config) -> None:
    """xdist controller: a thread shows the workers' progress files as they change (the folder is made at configure
    time, before xdist sets up its workers; the thread starts with the session, once the terminal reporter exists)."""
    import tempfile

    from .progress import Board, Messages, Poller, quiet

    found = config.stash.get(_POLLER, None)
    if found is None:
        config.stash[_POLLER] = (Path(tempfile.mkdtemp(prefix="longquant-progress-")), None)
        return
    folder, poller = found
    reporter = config.pluginmanager.get_plugin("terminalreporter")
    if poller is not None or reporter is None:
        return
    if quiet() or not getattr(reporter, "isatty", False):
        sink = Messages(lambda msg: reporter.write_line(f"longquant: {msg}"))
    else:
        from rich.console import Console

        sink = Board(Console(force_terminal=True))
    config.stash[_POLLER] = (folder, Poller(folder, sink).start())


@pytest.hookimpl(tryfirst=True)
def pytest_sessionstart(session: pytest.Session) -> None:
    if _POLLER in session.config.stash:
        _start_poller(session.config)


def _stop_poller(config: pytest.Config) -> None:
    found = config.stash.get(_POLLER, None)
    if found is not None:
        folder, poller = found
        if poller is not None:
            poller.stop()
        shutil.rmtree(folder, ignore_errors=True)
        del config.stash[_POLLER]


def pytest_report_header(config: pytest.Config) -> list[str] | None:
    if _config_path(config) is None:
        return None
    try:  # a bad config stops the session here with exit 4 and the message on stderr (UsageError propagates)
        lines = gate_run(config).header().splitlines()
    except LongquantError as exc:
        return [f"longquant: {exc}"]
    config.stash[_HEADER] = True
    return lines


def pytest_collection_finish(session: pytest.Session) -> None:
    # A config found next to the tests (not known when the header was printed): say it now.
    config = session.config
    if _RUN in config.stash and not config.stash.get(_HEADER, False) and not _is_worker(config):
        reporter = config.pluginmanager.get_plugin("terminalreporter")
        if reporter is not None:
            for line in config.stash[_RUN].header().splitlines():
                reporter.write_line(line)


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "lq_cell" in metafunc.fixturenames:
        try:
            run = gate_run(metafunc.config, metafunc.definition.path.parent)
            cases = run.cases()
        except LongquantError as exc:
            raise pytest.UsageError(f"longquant: {exc}") from None
        if not cases:  # an empty plan would pass as one skipped test: nothing gated is not a pass
            raise pytest.UsageError(f"longquant: {run.config.path} plans no gate test: add [[candidates]] (or "
                                    "rerun_reference = true), and at least one task, bucket and language")
        params = [pytest.param(c, id=c.id, marks=[pytest.mark.xdist_group(c.checkpoint), pytest.mark.longquant])
                  for c in cases]
        metafunc.parametrize("lq_cell", params, indirect=True)
    elif "lq_checkpoint" in metafunc.fixturenames:
        run = gate_run(metafunc.config, metafunc.definition.path.parent)
        names = run.checkpoint_names()
        metafunc.parametrize("lq_checkpoint", [pytest.param(n, id=n, marks=pytest.mark.xdist_group(n)) for n in names],
                             indirect=True, scope="session")


class GateCheck:
    """What `lq_cell` gives a test: the case, its outcome, and `check()` (pass, fail with the reason, or skip)."""

    def __init__(self, run: GateRun, case: Case, request: pytest.FixtureRequest):
        self.run, self.case, self._request = run, case, request

    @property
    def outcome(self) -> Outcome:
        family = [item.callspec.params["lq_cell"] for item in self._request.session.items
                  if hasattr(item, "callspec") and "lq_cell" in item.callspec.params]
        return self.run.outcome(self.case, family)

    def check(self) -> None:
        o = Outcome(self.case, not_gated=self.case.not_gated) if self.case.not_gated else self.outcome
        _record(self._request.node, o, self.run)
        if o.not_gated:
            if self.run.allowed(o.not_gated):
                pytest.skip(f"{o.not_gated} (allowed)")
            pytest.fail(self.run.not_gated_message(o), pytrace=False)
        if o.skip:
            pytest.skip(o.skip)
        if o.error:
            pytest.fail(o.error, pytrace=False)
        if o.verdict.outcome == "fail":
            pytest.fail(self.run.failure_message(o), pytrace=False)


@pytest.fixture
def lq_cell(request: pytest.FixtureRequest) -> GateCheck:
    return GateCheck(gate_run(request.config), request.param, request)


@pytest.fixture(scope="session")
def lq_run(request: pytest.FixtureRequest) -> GateRun:
    """The session's gate run (config, stores, runners)."""
    return gate_run(request.config)


@pytest.fixture(scope="session")
def lq_reference(lq_run: GateRun):
    """The reference checkpoint, resolved to a local folder (ResolvedCheckpoint)."""
    return lq_run.reference


@pytest.fixture(scope="session")
def lq_checkpoint(request: pytest.FixtureRequest, lq_run: GateRun):
    """A candidate (parametrized over the config's candidates), resolved; errors name the checkpoint."""
    try:
        return lq_run.checkpoint(request.param)
    except LongquantError as exc:
        pytest.fail(str(exc), pytrace=False)


@pytest.fixture
def lq_engine(request: pytest.FixtureRequest, lq_run: GateRun, lq_checkpoint):
    """The open engine of the current `lq_checkpoint` (loaded once per worker; the previous one is released)."""
    return lq_run.runner(lq_checkpoint.name if lq_checkpoint.name in lq_run.checkpoint_names() else REFERENCE).engine


def _record(item: pytest.Item, o: Outcome, run: GateRun) -> None:
    """Per-test figures into user_properties: they reach JUnit XML and, under xdist, the controller."""
    case = o.case
    rest = case.cell.id if case.cell else case.id.split("-", 1 if case.signal == "accuracy" else 2)[-1]
    props: list[tuple[str, Any]] = [("lq_checkpoint", case.checkpoint), ("lq_cell", rest), ("lq_level", case.level),
                                    ("lq_status", o.status), ("lq_signal", case.signal)]
    if o.not_gated:
        props += [("lq_not_gated", o.not_gated.reason), ("lq_not_gated_detail", o.not_gated.detail),
                  ("lq_allowed", run.allowed(o.not_gated))]
    v = o.verdict
    if v is not None:
        digits = 2 if v.unit == "points" else 6  # a divergence in nats/token lives in the third decimal and below
        props += [("lq_n", v.n), ("lq_reference", round(v.reference_mean, digits)),
                  ("lq_candidate", round(v.candidate_mean, digits)), ("lq_unit", v.unit),
                  ("lq_delta", round(v.delta, digits)), ("lq_ci", f"[{v.ci_low:.{digits}f}, {v.ci_high:.{digits}f}]"),
                  ("lq_ci_low", round(v.ci_low, digits)), ("lq_ci_high", round(v.ci_high, digits)),
                  ("lq_p", round(v.p_value, 5)), ("lq_p_holm", round(v.p_adjusted, 5)),
                  ("lq_tolerance", round(v.tolerance.points, digits)), ("lq_tolerance_source", v.tolerance.source),
                  ("lq_mdd", round(v.min_detectable_drop, digits)), ("lq_stale", v.stale)]
        if v.warnings:
            props.append(("lq_warnings", " | ".join(v.warnings)))
    try:  # the checkpoint's precision class, as the gate used it (a checkpoint that cannot be resolved has none)
        props.append(("lq_precision", run.precision_of(case.checkpoint)))
    except LongquantError:
        pass
    if o.case.cell is not None:
        c = o.case.cell
        props += [("lq_task", c.task), ("lq_bucket", c.bucket), ("lq_language", c.language)]
    if o.baseline_change:
        props.append(("lq_baseline_change", o.baseline_change))
    if o.result_file:
        props.append(("lq_result_file", o.result_file))
    if o.baseline_file:
        props.append(("lq_baseline_file", o.baseline_file))
    if o.seconds_per_sample is not None:
        props.append(("lq_seconds_per_sample", round(o.seconds_per_sample, 3)))
    if o.flips is not None:
        props += [("lq_flips_lost", len(o.flips["lost"])), ("lq_flips_gained", len(o.flips["gained"])),
                  ("lq_flips", o.flips)]
    if o.error:
        props.append(("lq_error", o.error.splitlines()[0][:300]))
    item.user_properties.extend(props)


class _Rows:
    """The controller's view of every gate test (xdist sends each worker's reports to it)."""

    def __init__(self) -> None:
        self.rows: list[dict[str, Any]] = []

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        if report.when != "call":
            return
        props = dict(p for p in report.user_properties if isinstance(p, tuple) and str(p[0]).startswith(_PREFIX))
        if props:
            props["nodeid"] = report.nodeid
            self.rows.append(props)


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    config = session.config
    _stop_poller(config)
    if _RUN in config.stash:
        config.stash[_RUN].close()
        config.stash[_RUN].progress.close()
    rows = config.stash[_ROWS].rows
    if _is_worker(config) or not rows:
        return
    run = gate_run(config)
    unused = []
    try:
        planned = {c.cell for c in run.cases() if c.cell is not None}
        # The baselines of every setup this plan uses (one per engine kind among its checkpoints).
        stores = {s.label(): run.baselines(s) for s in (run.baseline_setup_for(n) for n in run.checkpoint_names())}
        for store in stores.values():
            unused += [c for c in store.cells() if c not in planned]
            if config.getoption("--lq-prune-baselines") and unused:
                removed = store.prune(planned)
                config.stash[_PROPS].append(("pruned", [c.id for c in removed]))
    except LongquantError:
        pass
    summary = _summary(rows, unused)
    config.stash[_PROPS].append(("summary", summary))
    path = run.results.write_summary({"tests": rows, "run": run.settings(), "checkpoints": run.checkpoints_summary(),
                                      **summary})
    report = _opt(config, "report")
    if report:
        from .storage import write_text_atomic

        write_text_atomic(Path(report), path.read_text(encoding="utf-8"))
    if not config.getoption("--lq-no-reports"):
        config.stash[_PROPS].append(("reports", _write_reports(run.results.root)))


def _write_reports(folder: Path) -> str:
    """report.md, report.html and report.json beside summary.json; a report that cannot be made never fails the run."""
    from .report.data import build_report
    from .report.html import render_html
    from .report.markdown import load_summary, render_markdown
    from .storage import write_text_atomic

    try:
        report = build_report(folder)
        write_text_atomic(folder / "report.md", render_markdown(load_summary(folder), report.efficiency()))
        write_text_atomic(folder / "report.json", report.to_json())
        write_text_atomic(folder / "report.html", render_html(report))
    except Exception as exc:  # noqa: BLE001 - the gate's verdicts stand without their rendering
        return f"reports not written ({type(exc).__name__}: {exc}); `longquant report {folder}` retries"
    return f"reports: {folder / 'report.html'} (also report.md, report.json)"


def _summary(rows: list[dict[str, Any]], unused: list) -> dict[str, Any]:
    counts = defaultdict(int)
    for r in rows:
        counts[{"pass": "passed", "fail": "regressed"}.get(r["lq_status"], r["lq_status"])] += 1
        if "no baseline" in r.get("lq_error", ""):
            counts["missing baselines"] += 1
        if r.get("lq_stale"):
            counts["stale baselines"] += 1
    not_gated = [r for r in rows if r.get("lq_not_gated")]
    # baselines, not tests: under xdist two candidates' workers may both report refreshing the same cell
    counts["updated"] = len({r["lq_cell"] for r in rows if r.get("lq_baseline_change")})
    counts["unused"] = len(unused)
    return {"counts": dict(counts), "unused_baselines": [c.id for c in unused],
            "not_gated": [{"test": f"{r['lq_checkpoint']}-{r['lq_cell']}", "reason": r["lq_not_gated"],
                           "detail": r["lq_not_gated_detail"], "allowed": r.get("lq_allowed", False)}
                          for r in not_gated]}


def pytest_terminal_summary(terminalreporter, exitstatus: int, config: pytest.Config) -> None:
    rows = config.stash[_ROWS].rows
    if not rows or _is_worker(config):
        return
    from .report.terminal import write_summary

    summary = dict(config.stash.get(_PROPS, [])).get("summary") or _summary(rows, [])
    write_summary(terminalreporter, rows, summary)
    for name, cells in config.stash.get(_PROPS, []):
        if name == "pruned" and cells:
            terminalreporter.write_line(f"longquant: pruned {len(cells)} unused baseline entries: {', '.join(cells)}")
    if _RUN in config.stash:
        terminalreporter.write_line(f"longquant: results in {config.stash[_RUN].results.root}")
    for name, line in config.stash.get(_PROPS, []):
        if name == "reports":
            terminalreporter.write_line(f"longquant: {line}")


def plugin_args() -> list[str]:
    """`-p longquant_checks.plugin` where the plugin is not installed as a pytest11 entry point (a source tree on
    PYTHONPATH, as on a machine without pip access), else nothing: pytest refuses a plugin registered twice."""
    from importlib.metadata import entry_points

    installed = any(ep.value == "longquant_checks.plugin" for ep in entry_points(group="pytest11"))
    return [] if installed else ["-p", "longquant_checks.plugin"]
