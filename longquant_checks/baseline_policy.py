"""Which baseline a cell is compared with: the stored one, a refreshed one (update modes), or none and why.

Update modes (`--lq-update-baselines`): `missing` runs the reference where its setup has no baseline for the cell;
`failed` also where the stored one cannot be used (other prompts, reference, setup or scorer); `all` re-runs the
reference on every selected cell, bypassing the resume cache. A `--lq-limit` run never writes baselines.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Callable, Sequence

from .baselines import BaselineEntry, BaselineStore, describe_change, mismatches
from .errors import LongquantError
from .results import CellResult
from .schema import Cell, Sample
from .tasks.base import Task

UPDATE_MODES = ("missing", "failed", "all")


@dataclass
class BaselineChoice:
    """The baseline a cell is gated against (None: it cannot be), why not, and what a refresh changed."""

    entry: BaselineEntry | None
    problem: str | None = None
    change: str | None = None
    notes: list[str] = field(default_factory=list)


@dataclass
class BaselinePolicy:
    store: BaselineStore
    setup: dict  # setups.EngineSetup.baseline_setup() of the reference's runs for this store
    update: str | None
    limited: bool  # a --lq-limit run: compare the stored prefix, never write
    refresh_command: Callable[[str, Cell], str]  # (mode, cell) -> the command line that refreshes it
    traces: bool = False  # the divergence signal is on: a baseline needs the reference's token traces
    changes: list[str] = field(default_factory=list)
    # Cells whose reference ran in this session: every later candidate meets that same fresh entry.
    refreshed: set[Cell] = field(default_factory=set)

    def __post_init__(self) -> None:
        if self.update is not None and self.update not in UPDATE_MODES:
            raise LongquantError(f"--lq-update-baselines={self.update!r}; accepted: {', '.join(UPDATE_MODES)}")

    def wants_reference_run(self, cell: Cell, samples: Sequence[Sample], task: Task,
                            reference_fingerprint: str) -> bool:
        """Whether `choose` will run the reference for this cell (so a caller can run all such cells at once)."""
        if cell in self.refreshed:
            return False
        entry = self.store.get(cell)
        problems = self._problems(entry, samples, reference_fingerprint, task) if entry else []
        rescore = entry is not None and entry.scorer_version != task.scorer_version
        return (self.update == "all" or (self.update in ("missing", "failed") and entry is None)
                or (self.update == "failed" and bool(problems or rescore)))

    def choose(self, cell: Cell, samples: Sequence[Sample], task: Task, reference_fingerprint: str,
               run_reference: Callable[[Cell, bool], CellResult]) -> BaselineChoice:
        """`run_reference(cell, fresh)` runs the reference on this setup (fresh: bypassing the resume cache)."""
        entry = self.store.get(cell)
        problems = self._problems(entry, samples, reference_fingerprint, task) if entry else []
        rescore = entry is not None and entry.scorer_version != task.scorer_version
        if self.wants_reference_run(cell, samples, task, reference_fingerprint):
            if self.limited:
                raise LongquantError("baselines are not updated from a --lq-limit run (they would hold fewer "
                                     "samples); drop --lq-limit")
            result = run_reference(cell, self.update == "all")
            new = BaselineEntry.from_result(self.store.reference, result, self.setup)
            old = self.store.put(new)
            self.refreshed.add(cell)
            change = describe_change(old, new)
            self.changes.append(change)
            return BaselineChoice(new, change=change)
        where = self.store.file_for(cell.task)
        if entry is None:
            legacy = self.store.legacy_file(cell.task)
            old = (f" ({legacy} has a baseline of the layout before per-setup baselines: it records no engine "
                   "setup, so it is not used)") if legacy else ""
            return BaselineChoice(None, f"no baseline for {cell.id} on engine setup {self.store.setup_label} in "
                                        f"{where}{old}; create it with `{self.refresh_command('missing', cell)}` "
                                        "(runs the reference on the missing cells)")
        if problems:
            return BaselineChoice(entry, f"the baseline of {cell.id} ({where}) was made from something else: "
                                         f"{'; '.join(problems)}. Refresh it deliberately with "
                                         f"`{self.refresh_command('failed', cell)}`")
        if rescore:
            return self._rescored(entry, samples, task, cell)
        return BaselineChoice(entry)

    def _problems(self, entry: BaselineEntry, samples: Sequence[Sample], fingerprint: str, task: Task) -> list[str]:
        stored = entry.samples[:len(samples)] if self.limited else entry.samples
        problems = mismatches(replace(entry, samples=stored), samples, fingerprint, self.setup, task.version)
        if self.traces and not all("trace" in s for s in stored):
            problems.append("it keeps no token traces of the reference's answers, which the divergence signal "
                            "compares with (made before it, or with `divergence` off)")
        if entry.scorer_version != task.scorer_version and any("text" not in s for s in entry.samples):
            problems.append(f"the scorer changed (v{entry.scorer_version or '?'} in the baseline, "
                            f"v{task.scorer_version} now) and the baseline has no answer texts to re-score")
        return problems

    def _rescored(self, entry: BaselineEntry, samples: Sequence[Sample], task: Task, cell: Cell) -> BaselineChoice:
        """The stored answers scored with today's scorer, in memory (a committed file changes only on an update)."""
        by_id = {s.id: s for s in samples}
        rescored = [{**s, "score": float(task.score(by_id[s["id"]], s["text"]))} if s["id"] in by_id else s
                    for s in entry.samples]
        mean = 100 * sum(s["score"] for s in rescored) / len(rescored)
        new = replace(entry, samples=rescored, mean=round(mean, 4), scorer_version=task.scorer_version)
        return BaselineChoice(new, notes=[
            f"the baseline was re-scored from its stored answers (scorer v{entry.scorer_version or '?'} -> "
            f"v{task.scorer_version}: mean {entry.mean:.1f} -> {new.mean:.1f}); write it with "
            f"`{self.refresh_command('failed', cell)}`"])
