"""The decide stage: a checkpoint's paired cells -> verdicts of its cells and of its averages. Pure: no engines,
no files, no pytest.

Levels: each cell; each language's and each bucket's average (the studies found damage that grows with length and
is worse outside English, which an overall average hides); the overall average. Holm runs within each level over
the checkpoint's *planned* family (planned cells, planned languages, planned buckets), with what did not run
counted as p = 1: selecting tests (`-k`, `--lf`) or another cell erroring can only make a verdict more lenient,
never turn a pass into a fail, and says so.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Mapping, Sequence

from . import gate
from .plan import Case, NotGated
from .schema import Cell


@dataclass
class PairedCell:
    """A cell that ran: the reference's baseline scores and the checkpoint's, paired by sample."""

    case: Case
    reference: list[float]
    candidate: list[float]
    reference_mean: float  # points, for relative tolerances


@dataclass
class Outcome:
    """What a case's test reports: a verdict, or an error / a not-gated reason, plus files and baseline changes."""

    case: Case
    verdict: gate.Verdict | None = None
    error: str | None = None
    not_gated: NotGated | None = None
    skip: str | None = None  # nothing to decide (an average none of whose cells ran in this run)
    baseline_change: str | None = None
    notes: list[str] = field(default_factory=list)
    result_file: str | None = None
    baseline_file: str | None = None
    seconds_per_sample: float | None = None
    # An accuracy cell's churn against its baseline: sample ids that went correct -> wrong and wrong -> correct.
    flips: dict[str, list[str]] | None = None

    @property
    def status(self) -> str:
        if self.not_gated:
            return "not gated"
        if self.skip:
            return "skipped"
        if self.error:
            return "error"
        return self.verdict.outcome if self.verdict else "error"


def flips(reference: Mapping[str, float], candidate: Sequence[tuple[str, float]]) -> dict[str, list[str]]:
    """Per sample id: correct (score > 0.5) in the reference and not in the candidate ("lost"), or the reverse
    ("gained"). The net change alone hides churn: +2 -2 is no change in accuracy but four changed answers."""
    lost = [sid for sid, score in candidate if reference[sid] > 0.5 >= score]
    gained = [sid for sid, score in candidate if score > 0.5 >= reference[sid]]
    return {"lost": lost, "gained": gained}


@dataclass(frozen=True)
class Tolerances:
    """Defaults per precision class for each level, and the config's per-cell rules."""

    cell: Mapping[str, float]
    language: Mapping[str, float]
    bucket: Mapping[str, float]
    aggregate: Mapping[str, float]
    rules: Sequence[gate.ToleranceRule] = ()


@dataclass(frozen=True)
class Family:
    """The cells the checkpoint planned (that can run here), so verdicts do not depend on what was selected."""

    planned: tuple[Cell, ...]

    @property
    def cells(self) -> int:
        return len(self.planned)

    @property
    def languages(self) -> int:
        return len({c.language for c in self.planned})

    @property
    def buckets(self) -> int:
        return len({c.bucket for c in self.planned})


def decide_checkpoint(name: str, precision: str, paired: Sequence[PairedCell], levels: Sequence[Case],
                      family: Family, tolerances: Tolerances, mode: str, alpha: float, seed: int
                      ) -> dict[Case, gate.Verdict | str]:
    """Verdicts for the `paired` cells and the `levels` cases (language / bucket / aggregate) asked for, all from
    `gate.gate_candidate` (each level a family over the plan at its share of alpha); a level none of whose cells
    ran gets a string saying so instead."""
    out: dict[Case, gate.Verdict | str] = {}
    cells = []
    for p in paired:
        c = p.case.cell
        tol = gate.resolve_tolerance(precision, c.task, c.bucket, c.language, p.reference_mean, tolerances.rules,
                                     tolerances.cell)
        cells.append(gate.PairedCell(c.task, c.bucket, c.language, p.reference, p.candidate, tol))
    by_id: dict[str, gate.Verdict] = {}
    if cells:
        by_level = {"cell": tolerances.cell, "language": tolerances.language, "bucket": tolerances.bucket,
                    "aggregate": tolerances.aggregate}
        level_tolerances = {}
        for level, table in by_level.items():
            points = gate.aggregate_tolerance(precision, table).points
            what = "" if level in ("cell", "aggregate") else f"{level} "
            level_tolerances[level] = gate.Tolerance(points, f"default {what}{'average ' if level != 'cell' else ''}"
                                                             f"for {precision} ({points:g} points)")
        planned = [(c.task, c.bucket, c.language) for c in family.planned] or None
        for v in gate.gate_candidate(name, cells, level_tolerances, mode=mode, alpha=alpha, seed=seed,
                                     planned=planned):
            by_id[v.cell_id] = v
    for p in paired:
        out[p.case] = by_id[p.case.cell.id]
    for case in levels:
        key = gate.level_id(case.level, case.group or "")
        out[case] = by_id.get(key) or f"none of the cells of {case.id} ran in this run (select them too)"
    return out


def decide_divergence(name: str, precision: str, divergences: Mapping[Case, Sequence[float]],
                      paired: Sequence[PairedCell], levels: Sequence[Case], family: Family, tolerances,
                      mode: str, alpha: float, seed: int, signal: str) -> dict[Case, gate.Verdict | str]:
    """Verdicts of the divergence cases (`divergences`: a cell case -> its per-sample divergence) and of the asked
    `levels` (divergence languages / buckets / aggregate, and the length trends of the divergence and of the
    accuracy drop, from `paired`), by divergence_gate; `tolerances`: noise_floor.DivergenceTolerances."""
    from . import divergence_gate

    out: dict[Case, gate.Verdict | str] = {}
    by_id: dict[str, gate.Verdict] = {}
    if divergences:
        cells = [(c.cell.task, c.cell.bucket, c.cell.language, values) for c, values in divergences.items()]
        planned = [(c.task, c.bucket, c.language) for c in family.planned] or None
        for v in divergence_gate.gate_divergence(name, cells, tolerances.by_level, signal, mode, alpha, seed,
                                                 planned):
            by_id[v.cell_id] = v
        for c in divergences:
            out[c] = by_id[c.cell.id]
    trends: dict[str, list[tuple[Case, gate.Verdict]]] = {}
    for case in levels:
        if case.level == "trend":
            found = _trend(name, case, divergences, paired, tolerances, mode, alpha, seed)
            if isinstance(found, str):
                out[case] = found
            else:
                trends.setdefault(case.signal, []).append((case, found))
            continue
        key = gate.level_id(case.level, case.group or "")
        out[case] = by_id.get(key) or f"none of the cells of {case.id} ran in this run (select them too)"
    # A signal's trends are one Holm family over the candidate's planned tasks (each task asks the same question).
    tasks = len({c.task for c in family.planned}) or None
    for members in trends.values():
        decided = gate.decide([v for _, v in members], alpha, family_size=max(tasks or 0, len(members)))
        out.update({case: v for (case, _), v in zip(members, decided)})
    return out


def _trend(name: str, case: Case, divergences: Mapping[Case, Sequence[float]], paired: Sequence[PairedCell],
           tolerances, mode: str, alpha: float, seed: int) -> gate.Verdict | str:
    from . import divergence_gate

    task = case.group
    if case.signal == "accuracy":
        cells = [(p.case.cell.bucket, [100 * (r - c) for r, c in zip(p.reference, p.candidate)])
                 for p in paired if p.case.cell.task == task]
        tolerance = tolerances.accuracy_trend
    else:
        cells = [(c.cell.bucket, v) for c, v in divergences.items() if c.cell.task == task]
        tolerance = tolerances.trend
    if len({b for b, _ in cells}) < 2:
        return f"the length trend of {task} needs cells of two buckets that ran in this run; {len(cells)} ran"
    return divergence_gate.length_trend(name, task, cells, tolerance, case.signal, mode, alpha,
                                        gate._sub_seed(seed, "trend", task, case.signal))
