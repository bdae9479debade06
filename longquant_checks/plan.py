"""The plan stage: which cells to run, in a stable order, and why any of them is skipped."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable

from .errors import UnknownValueError
from .schema import BUCKETS, Cell, bucket_label, parse_bucket
from .tasks.base import task_names
from .text.languages import LANGUAGES


@dataclass(frozen=True)
class PlannedCell:
    cell: Cell
    skip_reason: str | None = None


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
               languages: Iterable[str] | None, max_model_len: int | None = None) -> list[PlannedCell]:
    """Cells in a stable order (task, bucket, language); buckets over the model's length are skipped."""
    planned = []
    for task in resolve_tasks(tasks):
        for bucket in resolve_buckets(buckets):
            for language in resolve_languages(languages):
                reason = None
                if max_model_len is not None and bucket > max_model_len:
                    reason = f"bucket {bucket_label(bucket)} ({bucket} tokens) exceeds the model's max length {max_model_len}"
                planned.append(PlannedCell(Cell(task, bucket, language), reason))
    return planned
