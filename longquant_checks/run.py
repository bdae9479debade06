"""A gate run, without pytest: plan cases, get baselines (refreshing them when asked), run checkpoints, decide.

The plugin (plugin.py) maps this onto pytest items; everything here is plain Python and dataclasses.
A checkpoint's cells are decided together (Holm needs every p-value of the family): the family is
that checkpoint's selected cells in this run, all of which run in one worker (xdist loadgroup).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

from . import gate
from .baselines import BaselineEntry, BaselineStore, describe_change, mismatches, version_notes
from .checkpoints.info import max_context_length
from .checkpoints.produce import CalibrationSpec
from .checkpoints.recipes import get_recipe, unsupported_reason
from .checkpoints.resolve import ResolvedCheckpoint, resolve
from .config import Config
from .errors import LongquantError
from .evaluate import CheckpointRunner, EngineSetup, SampleBook, library_versions, resolve_device
from .plan import plan_cells
from .results import CellResult, ResultStore
from .schema import Cell, bucket_label
from .tasks.base import TextSources
from .text.fitting import FitError
from .text.tokens import PromptTokenizer

REFERENCE = "reference"
AGGREGATE = "ALL"
UPDATE_MODES = ("missing", "failed", "all")


@dataclass(frozen=True)
class Case:
    """One test: a checkpoint (candidate name, or "reference" for a re-run) on a cell, or its aggregate."""

    checkpoint: str
    cell: Cell | None  # None: the aggregate check over the checkpoint's cells
    skip_reason: str | None = None

    @property
    def id(self) -> str:
        return f"{self.checkpoint}-{self.cell.id if self.cell else 'aggregate'}"


@dataclass
class Outcome:
    """What a case's test reports: a verdict, or an error/skip, plus files and baseline changes."""

    case: Case
    verdict: gate.Verdict | None = None
    error: str | None = None
    skip: str | None = None
    baseline_change: str | None = None
    notes: list[str] = field(default_factory=list)
    result_file: str | None = None
    baseline_file: str | None = None
    seconds_per_sample: float | None = None

    @property
    def status(self) -> str:
        if self.skip:
            return "skipped"
        if self.error:
            return "error"
        return self.verdict.outcome if self.verdict else "error"


class GateRun:
    def __init__(self, config: Config, *, engine: str | None = None, limit: int | None = None,
                 seed: int | None = None, mode: str | None = None, tolerances: dict[str, float] | None = None,
                 baseline_dir: Path | None = None, update: str | None = None,
                 progress: Callable[[str], None] | None = None):
        g = config.gate
        self.config = config
        self.engine_kind = engine or g.engine
        self.n = min(g.samples, limit) if limit else g.samples
        self.limited = bool(limit and limit < g.samples)
        self.seed = g.seed if seed is None else seed
        self.mode = mode or g.mode
        if update is not None and update not in UPDATE_MODES:
            raise LongquantError(f"--lq-update-baselines={update!r}; accepted: {', '.join(UPDATE_MODES)}")
        self.update = update
        self.cell_defaults = {**gate.DEFAULT_CELL_TOLERANCE, **g.tolerance.cell, **(tolerances or {})}
        self.aggregate_defaults = {**gate.DEFAULT_AGGREGATE_TOLERANCE, **g.tolerance.aggregate}
        self.rules = config.tolerance_rules()
        self.device = resolve_device(g.device) if self.engine_kind != "openai" else "server"
        self.results = ResultStore(config.results_dir)
        self.baselines = BaselineStore(baseline_dir or config.baseline_dir, config.reference_name)
        self.progress = progress or (lambda _msg: None)
        self._reference: ResolvedCheckpoint | None = None
        self._book: SampleBook | None = None
        self._runner: CheckpointRunner | None = None
        self._resolved: dict[str, ResolvedCheckpoint | LongquantError] = {}
        self._outcomes: dict[Case, Outcome] = {}
        self.changes: list[str] = []

    # -- what to run ---------------------------------------------------------------------------
    def checkpoint_names(self) -> list[str]:
        names = [REFERENCE] if self.config.gate.rerun_reference else []
        return names + [c.name for c in self.config.gate.candidates]

    def engine_for(self, name: str) -> str:
        if name == REFERENCE:
            return self.engine_kind
        return self.config.candidate(name).engine or self.engine_kind

    def max_model_len(self) -> int | None:
        args = self.config.gate.engine_args
        if isinstance(args.get("max_model_len"), int):
            return args["max_model_len"]
        return max_context_length(self.reference_path())

    def cases(self) -> list[Case]:
        """Every test, in a stable order (xdist needs identical collection on every worker)."""
        g = self.config.gate
        planned = plan_cells(g.tasks, g.buckets, g.languages, self.max_model_len())
        cases = []
        for name in self.checkpoint_names():
            not_here = None
            if name != REFERENCE and (recipe := self.config.candidate(name).recipe):
                dev = "cuda" if self.device.startswith("cuda") else "cpu"
                reason = unsupported_reason(recipe, self.engine_for(name), dev)
                not_here = reason and f"recipe {recipe} on engine {self.engine_for(name)} ({dev}): {reason}"
            cases += [Case(name, p.cell, not_here or p.skip_reason) for p in planned]
            cases.append(Case(name, None, not_here))
        return cases

    # -- shared inputs ------------------------------------------------------------------------
    def reference_path(self) -> str:
        return self.reference.path

    @property
    def reference(self) -> ResolvedCheckpoint:
        if self._reference is None:
            ref = self.config.gate.reference
            self._reference = resolve(self.config.reference_name, source=ref.source, precision="16-bit",
                                      engine=self.engine_kind, device=self.device, engine_args=ref.engine_args)
        return self._reference

    @property
    def book(self) -> SampleBook:
        if self._book is None:
            g = self.config.gate
            sources = TextSources({k: self.config.resolve(v) for k, v in g.corpora.items()},
                                  self.config.resolve(g.qa_file) if g.qa_file else None)
            tok = PromptTokenizer.from_pretrained(self.reference_path(),
                                                  trust_remote_code=g.reference.trust_remote_code)
            self._book = SampleBook(tok, self.n, self.seed, sources)
        return self._book

    def setup_for(self, name: str) -> EngineSetup:
        args = dict(self.config.gate.engine_args)
        if name == REFERENCE:
            args.update(self.config.gate.reference.engine_args)
        else:
            args.update(self.config.candidate(name).engine_args)
        return EngineSetup(self.engine_for(name), self.device, args)

    def checkpoint(self, name: str) -> ResolvedCheckpoint:
        """The resolved checkpoint (downloaded / produced); the same error for every test of a broken one."""
        if name == REFERENCE:
            return self.reference
        if name not in self._resolved:
            c = self.config.candidate(name)
            g = self.config.gate
            calibration = CalibrationSpec(g.calibration.samples, g.calibration.tokens,
                                          tuple(g.calibration.languages), g.calibration.seed,
                                          str(self.config.resolve(g.calibration.file)) if g.calibration.file else None)
            try:
                # A relative local path is relative to the config file; anything else (a hub id) as written.
                source = c.source
                if source and self.config.resolve(source).exists():
                    source = str(self.config.resolve(source))
                self._resolved[name] = resolve(
                    name, source=source, recipe=c.recipe, reference=self.reference_path(), precision=c.precision,
                    engine=self.engine_for(name), device=self.device, engine_args=c.engine_args,
                    calibration=calibration)
            except LongquantError as exc:
                self._resolved[name] = exc
        found = self._resolved[name]
        if isinstance(found, LongquantError):
            raise found
        return found

    def runner(self, name: str) -> CheckpointRunner:
        """This checkpoint's runner; the previous checkpoint's engine is released first (one model at a time)."""
        if self._runner is not None and self._runner.label != name:
            self._runner.close()
            self._runner = None
        if self._runner is None:
            self._runner = CheckpointRunner(self.checkpoint(name), self.setup_for(name), self.results, self.book,
                                            label=name, progress=self.progress)
        return self._runner

    def close(self) -> None:
        if self._runner is not None:
            self._runner.close()
            self._runner = None

    # -- baselines ------------------------------------------------------------------------------
    def _baseline_problems(self, entry: BaselineEntry, cell: Cell) -> list[str]:
        samples = self.book.samples(cell)
        stored = entry.samples[:len(samples)] if self.limited else entry.samples
        view = BaselineEntry(**{**entry.__dict__, "samples": stored})
        return mismatches(view, samples, self.reference.fingerprint, self.engine_kind,
                          self.book.task(cell.task).version)

    def _refresh(self, cell: Cell) -> tuple[BaselineEntry, str]:
        if self.limited:
            raise LongquantError("baselines are not updated from a --lq-limit run (they would hold fewer samples); "
                                 "drop --lq-limit")
        result = self.runner(REFERENCE).run(cell)
        new = BaselineEntry.from_result(self.config.reference_name, result)
        old = self.baselines.put(new)
        change = describe_change(old, new)
        self.changes.append(change)
        return new, change

    def baseline(self, cell: Cell) -> tuple[BaselineEntry | None, str | None, str | None]:
        """(entry, problem, change): refreshed when the update mode selects it; else the stored one and why it can't be used."""
        entry = self.baselines.get(cell)
        problems = self._baseline_problems(entry, cell) if entry else []
        wanted = (self.update == "all" or (self.update in ("missing", "failed") and entry is None)
                  or (self.update == "failed" and problems))
        if wanted:
            entry, change = self._refresh(cell)
            return entry, None, change
        if entry is None:
            return None, (f"no baseline for {cell.id} in {self.baselines.file_for(cell.task)}; create it with "
                          f"`pytest --lq-update-baselines=missing` (runs the reference on the missing cells)"), None
        if problems:
            return entry, (f"the baseline of {cell.id} ({self.baselines.file_for(cell.task)}) was made from "
                           f"something else: {'; '.join(problems)}. Refresh it deliberately with "
                           f"`pytest --lq-update-baselines=failed -k {cell.id}`"), None
        return entry, None, None

    # -- deciding ---------------------------------------------------------------------------------
    def precision_of(self, name: str) -> str:
        if name == REFERENCE:
            return "16-bit"
        c = self.config.candidate(name)
        if c.precision:
            return c.precision
        if c.recipe:
            return get_recipe(c.recipe).precision
        return self.checkpoint(name).precision

    def outcome(self, case: Case, family: Sequence[Case]) -> Outcome:
        """The case's outcome; the first call for a checkpoint decides its whole family (Holm)."""
        if case not in self._outcomes:
            self._decide(case.checkpoint, [c for c in family if c.checkpoint == case.checkpoint])
        return self._outcomes[case]

    def _decide(self, name: str, family: Sequence[Case]) -> None:
        cell_cases = [c for c in family if c.cell is not None and not c.skip_reason]
        for c in family:
            if c.skip_reason:
                self._outcomes[c] = Outcome(c, skip=c.skip_reason)
        # Baselines first (may run the reference), then the checkpoint: one model loaded at a time.
        inputs: dict[Case, tuple[BaselineEntry, str | None]] = {}
        for c in cell_cases:
            try:
                self.book.samples(c.cell)
            except FitError as exc:
                self._outcomes[c] = Outcome(c, skip=str(exc))
                continue
            try:
                entry, problem, change = self.baseline(c.cell)
            except LongquantError as exc:
                self._outcomes[c] = Outcome(c, error=str(exc))
                continue
            if problem:
                self._outcomes[c] = Outcome(c, error=problem, baseline_file=str(self.baselines.file_for(c.cell.task)))
            else:
                inputs[c] = (entry, change)
        verdicts: dict[Case, tuple[gate.Verdict, CellResult, BaselineEntry, str | None]] = {}
        precision = None
        for c, (entry, change) in inputs.items():
            try:
                precision = precision or self.precision_of(name)
                result = self.runner(name).run(c.cell)
            except LongquantError as exc:
                self._outcomes[c] = Outcome(c, error=f"{name}: {exc}")
                continue
            ref_scores = {s["id"]: s["score"] for s in entry.samples}
            paired_ref = [ref_scores[s.id] for s in result.samples]
            tol = gate.resolve_tolerance(precision, c.cell.task, c.cell.bucket, c.cell.language,
                                         entry.mean, self.rules, self.cell_defaults)
            v = gate.compare_cell(name, c.cell.id, paired_ref, result.scores, tol, mode=self.mode,
                                  alpha=self.config.gate.alpha, seed=self.seed)
            verdicts[c] = (v, result, entry, change)
        decided = gate.decide([v for v, *_ in verdicts.values()], alpha=self.config.gate.alpha)
        pairs = []
        for (c, (_, result, entry, change)), v in zip(verdicts.items(), decided):
            notes = version_notes(entry, result.engine.get("versions", {}), result.engine.get("device", ""),
                                  result.engine.get("settings", {}))
            self._outcomes[c] = Outcome(c, verdict=v, baseline_change=change, notes=notes,
                                        result_file=result.path, baseline_file=str(self.baselines.file_for(c.cell.task)),
                                        seconds_per_sample=result.seconds_per_sample)
            ref_scores = {s["id"]: s["score"] for s in entry.samples}
            pairs.append(([ref_scores[s.id] for s in result.samples], result.scores))
        for c in family:
            if c.cell is None and c not in self._outcomes:
                if not pairs:
                    self._outcomes[c] = Outcome(c, skip=f"no cell of {name} was compared in this run")
                    continue
                precision = precision or self.precision_of(name)
                tol_points = self.aggregate_defaults[precision]
                tol = gate.Tolerance(tol_points, f"aggregate default for {precision} ({tol_points:g} points)")
                v = gate.aggregate(name, pairs, tol, mode=self.mode, alpha=self.config.gate.alpha, seed=self.seed)
                self._outcomes[c] = Outcome(c, verdict=v)

    # -- messages ---------------------------------------------------------------------------------
    def failure_message(self, o: Outcome) -> str:
        v = o.verdict
        lines = [gate.format_failure(v)]
        if o.baseline_file:
            lines.append(f"baseline: {o.baseline_file}")
        if o.result_file:
            lines.append(f"per-sample outputs: {o.result_file}")
        lines += [f"note: {n}" for n in o.notes]
        case = o.case
        if case.cell is not None:
            lines.append("to accept this drop for this cell, add to the config:\n"
                         f"  [[tolerance.rules]]\n  task = \"{case.cell.task}\"\n  bucket = \"{bucket_label(case.cell.bucket)}\"\n"
                         f"  language = \"{case.cell.language}\"\n  precision = \"{self.precision_of(case.checkpoint)}\"\n"
                         f"  points = {max(v.tolerance.points, -v.delta) + 0.5:.1f}")
            lines.append(f"if the reference or engine changed instead, refresh the baseline: "
                         f"pytest --lq-update-baselines=failed -k {case.cell.id}")
        return "\n".join(lines)

    def header(self) -> str:
        versions = {k: v for kind in ("hf", "vllm", "openai") for k, v in library_versions(kind).items()}
        try:
            import importlib.metadata as md

            versions["llmcompressor"] = "own env (" + (os.environ.get("LONGQUANT_QUANT_PYTHON") or ".venv-quant") + ")"
            versions["longquant-checks"] = md.version("longquant-checks")
        except Exception:
            pass
        g = self.config.gate
        return (f"longquant: config {self.config.path}, reference {self.config.reference_name}, "
                f"{len(g.candidates)} candidate(s), engine {self.engine_kind} on {self.device}, mode {self.mode}, "
                f"n={self.n}, seed={self.seed}\n"
                f"longquant versions: " + ", ".join(f"{k} {v}" for k, v in sorted(versions.items())))
