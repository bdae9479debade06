"""The plan stage: which cells and cases (checkpoint x cell) to run, in a stable order, and which of them cannot
run here ("not gated", with the reason).

Not gated is not passed: a planned case that cannot run fails the session unless the user allowed its reason
(config `allow_not_gated`, flag `--lq-allow-not-gated`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Sequence

from .errors import UnknownValueError
from .schema import BUCKETS, Cell, bucket_label, parse_bucket
from .tasks.base import task_names
from .text.languages import LANGUAGES


# Why a planned case cannot run here.
NOT_GATED_REASONS = {
    "unsupported": "the recipe cannot run on this engine and device",
    "too-long": "the bucket is beyond the model's max length",
    "no-fit": "the cell's fixed parts (instructions, needles, answer budget) do not fit the bucket in this tokenizer",
    "no-logprobs": "the engine gives no token log-probabilities, so the divergence signal cannot be measured (the "
                   "accuracy gate stands alone)",
}


@dataclass(frozen=True)
class NotGated:
    reason: str  # a key of NOT_GATED_REASONS
    detail: str

    def __str__(self) -> str:
        return f"not gated ({self.reason}): {self.detail}"


@dataclass(frozen=True)
class PlannedCell:
    cell: Cell
    not_gated: NotGated | None = None

    @property
    def skip_reason(self) -> str | None:
        return self.not_gated.detail if self.not_gated else None


LEVELS = ("cell", "language", "bucket", "aggregate")


@dataclass(frozen=True)
class Case:
    """One test: a checkpoint (candidate name, or "reference" for a re-run) on a cell, or one of its averages:
    over a language's cells, over a bucket's cells, or over all its cells (the aggregate)."""

    checkpoint: str
    cell: Cell | None = None
    not_gated: NotGated | None = None
    level: str = "cell"
    group: str | None = None  # the language code or bucket label of a language / bucket gate; a trend's task
    signal: str = "accuracy"  # or the divergence signal ("kl", "nll", "top1"); level "trend": the length trend

    @property
    def id(self) -> str:
        prefix = self.checkpoint if self.signal == "accuracy" else f"{self.checkpoint}-{self.signal}"
        if self.level == "trend":
            return f"{prefix}-trend-{self.group}"
        if self.level == "cell":
            return f"{prefix}-{self.cell.id}"
        return f"{prefix}-aggregate" if self.level == "aggregate" else f"{prefix}-{self.level}-{self.group}"

    def covers(self, cell: Cell) -> bool:
        """Whether `cell` is one of the cells this case's average is taken over."""
        if self.level == "trend":
            return cell.task == self.group
        if self.level == "language":
            return cell.language == self.group
        if self.level == "bucket":
            return bucket_label(cell.bucket) == self.group
        return self.level == "aggregate" or cell == self.cell


@dataclass(frozen=True)
class PlannedCheckpoint:
    name: str
    engine: str
    recipe: str | None = None


def plan_cases(checkpoints: Sequence[PlannedCheckpoint], cells: Sequence[PlannedCell], device: str,
               divergence: str | None = None, trend: bool = False) -> list[Case]:
    """Every test in a stable order (xdist needs identical collection on every worker): each checkpoint's cells,
    its languages, buckets and aggregate; with a `divergence` signal the same again for it; with `trend` (and two
    buckets or more) a length trend per task of the divergence and of the accuracy drop. A recipe its engine
    cannot run on this device makes all of that checkpoint's cases not gated."""
    from .checkpoints.recipes import unsupported_reason

    dev = "cuda" if device.startswith("cuda") else "cpu"
    languages = list(dict.fromkeys(p.cell.language for p in cells))
    buckets = list(dict.fromkeys(bucket_label(p.cell.bucket) for p in cells))
    cases = []
    for c in checkpoints:
        reason = unsupported_reason(c.recipe, c.engine, dev)
        unsupported = reason and NotGated("unsupported", f"recipe {c.recipe} on engine {c.engine} ({dev}): {reason}")
        cases += [Case(c.name, p.cell, unsupported or p.not_gated) for p in cells]
        # A level with one group would repeat the aggregate.
        if len(languages) > 1:
            cases += [Case(c.name, None, unsupported or None, "language", code) for code in languages]
        if len(buckets) > 1:
            cases += [Case(c.name, None, unsupported or None, "bucket", label) for label in buckets]
        cases.append(Case(c.name, None, unsupported or None, "aggregate"))
        if divergence:
            cases += [Case(c.name, p.cell, unsupported or p.not_gated, signal=divergence) for p in cells]
            if len(languages) > 1:
                cases += [Case(c.name, None, unsupported or None, "language", code, divergence) for code in languages]
            if len(buckets) > 1:
                cases += [Case(c.name, None, unsupported or None, "bucket", label, divergence) for label in buckets]
            cases.append(Case(c.name, None, unsupported or None, "aggregate", signal=divergence))
        if trend and len(buckets) > 1:
            for task in dict.fromkeys(p.cell.task for p in cells):
                for signal in ([divergence] if divergence else []) + ["accuracy"]:
                    cases.append(Case(c.name, None, unsupported or None, "trend", task, signal))
    return cases


def check_allowed(reasons: Iterable[str]) -> list[str]:
    chosen = list(reasons)
    for reason in chosen:
        if reason not in NOT_GATED_REASONS:
            raise UnknownValueError("not-gated reason", reason, list(NOT_GATED_REASONS))
    return chosen


def resolve_tasks(names: Iterable[str] | None) -> list[str]:
    known = task_names()
    chosen = list(known) if not names or list(names) == ["all"] else list(names)
    for name in chosen:
        if name not in known:
            raise UnknownValueError("task", name, known)
    return chosen


def resolve_languages(codes: Iterable[str] | None) -> list[str]:
    chosen = list(LANGUAGES) if not codes or list(codes) == ["all"] else list(codes)
    for code in chosen:
        if code not in LANGUAGES:
            raise UnknownValueError("language", code, LANGUAGES)
    return chosen


def resolve_buckets(values: Iterable[str | int] | None) -> list[int]:
    chosen = list(BUCKETS) if not values or list(values) == ["all"] else list(values)
    return sorted({parse_bucket(v) for v in chosen})


def plan_cells(tasks: Iterable[str] | None, buckets: Iterable[str | int] | None,
               languages: Iterable[str] | None, max_model_len: int | None = None,
               too_long_hint: str = "") -> list[PlannedCell]:
    """Cells in a stable order (task, bucket, language); buckets over the model's length are not gated, with
    `too_long_hint` (the setting that would enable them) in the reason."""
    planned = []
    for task in resolve_tasks(tasks):
        for bucket in resolve_buckets(buckets):
            for language in resolve_languages(languages):
                reason = None
                if max_model_len is not None and bucket > max_model_len:
                    reason = NotGated("too-long", f"bucket {bucket_label(bucket)} ({bucket} tokens) exceeds the "
                                                  f"model's max length {max_model_len}{too_long_hint}")
                planned.append(PlannedCell(Cell(task, bucket, language), reason))
    return planned
