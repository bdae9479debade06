"""Run records and the resume cache of finished cells.

A cell's result is keyed by everything that determines it without loading a model: the checkpoint's
identity (fingerprint, recipe), the engine kind, its requested settings and library versions, the
device, and the prompts' hashes. A repeated or interrupted run reuses finished cells and only runs
what is missing. One JSONL file per (checkpoint, cell): a header line, then one line per sample
(prompt hash, output text, score, timings). Writes are atomic, so Ctrl-C loses at most the cell in flight.

Scores are not part of the key: each sample's output text is kept, so when a task's scorer changes (its
`scorer_version`) a cached cell is re-scored from that text instead of being served with old scores or re-run.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Sequence

from .errors import LongquantError
from .schema import Cell, Sample
from .storage import write_text_atomic

RESULTS_FORMAT = 2


@dataclass
class SampleResult:
    id: str
    prompt_sha256: str
    score: float
    text: str
    n_prompt_tokens: int
    n_output_tokens: int
    seconds: float
    finish_reason: str = ""
    # For reports (not part of the key; absent in files of older runs): the prompt's ends and the expected answers.
    prompt_head: str = ""
    prompt_tail: str = ""
    answers: list[str] = field(default_factory=list)
    # The divergence signal (divergence.py), absent where it was off: a reference's own answer's token trace
    # (TokenTrace.to_json, stored with its baseline), a candidate's divergence from it (SampleDivergence.to_json).
    trace: dict[str, Any] | None = None
    divergence: dict[str, Any] | None = None


@dataclass
class CellResult:
    """One checkpoint's per-sample results for one cell."""

    checkpoint: str
    cell: Cell
    samples: list[SampleResult]
    key: str
    checkpoint_identity: dict[str, Any] = field(default_factory=dict)
    engine: dict[str, Any] = field(default_factory=dict)  # kind, requested settings, versions, device
    task_version: str = ""
    seed: int = 0
    created: str = ""
    path: str | None = None
    reused: bool = False  # loaded from the resume cache
    scorer_version: str = ""
    longquant_version: str = ""
    rescored_from: str | None = None  # the scorer version the cached scores had, when re-scored on load
    prompt: dict[str, Any] = field(default_factory=dict)  # the prompt style: system prompt, answer prefix
    divergence_unavailable: str = ""  # why the divergence was asked for but not measured (the engine cannot)

    @property
    def scores(self) -> list[float]:
        return [s.score for s in self.samples]

    @property
    def mean_points(self) -> float:
        return 100.0 * sum(self.scores) / len(self.samples) if self.samples else float("nan")

    @property
    def seconds_per_sample(self) -> float:
        return sum(s.seconds for s in self.samples) / len(self.samples) if self.samples else 0.0


def cell_key(checkpoint_identity: dict[str, Any], engine: dict[str, Any], samples: Sequence[Sample],
             task_version: str) -> str:
    """Everything that determines a cell's outputs, hashed (the checkpoint's display name is not part of it)."""
    ident = {k: v for k, v in checkpoint_identity.items() if k != "name"}
    parts = {"format": RESULTS_FORMAT, "checkpoint": ident, "engine": engine, "task_version": task_version,
             "prompts": [[s.id, s.prompt_sha256, s.max_new_tokens] for s in samples]}
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode("utf-8")).hexdigest()


class ResultStore:
    """`<results_dir>/cells/<checkpoint>/<cell id>-<key>.jsonl` plus a versioned `summary.json` per run."""

    def __init__(self, root: Path):
        self.root = Path(root)

    def path_for(self, checkpoint: str, cell: Cell, key: str) -> Path:
        return self.root / "cells" / checkpoint / f"{cell.id}-{key[:16]}.jsonl"

    def load(self, checkpoint: str, cell: Cell, key: str) -> CellResult | None:
        path = self.path_for(checkpoint, cell, key)
        if not path.is_file():
            return None
        try:
            lines = path.read_text(encoding="utf-8").splitlines()
            header = json.loads(lines[0])
            samples = [SampleResult(**json.loads(line)) for line in lines[1:]]
        except (OSError, ValueError, TypeError, IndexError):
            return None  # unreadable: run the cell again (atomic writes make this rare)
        if header.get("format") != RESULTS_FORMAT or header.get("key") != key:
            return None
        return CellResult(checkpoint, cell, samples, key, header.get("checkpoint_identity", {}),
                          header.get("engine", {}), header.get("task_version", ""), header.get("seed", 0),
                          header.get("created", ""), str(path), reused=True,
                          scorer_version=header.get("scorer_version", ""),
                          longquant_version=header.get("longquant_version", ""),
                          rescored_from=header.get("rescored_from"), prompt=header.get("prompt", {}))

    def lock(self, checkpoint: str, cell: Cell, key: str):
        """Held while a cell is computed: a second process (another xdist worker) waits, then reuses the result."""
        from filelock import FileLock

        path = self.path_for(checkpoint, cell, key)
        path.parent.mkdir(parents=True, exist_ok=True)
        return FileLock(str(path) + ".lock")

    def save(self, result: CellResult) -> Path:
        path = self.path_for(result.checkpoint, result.cell, result.key)
        result.created = result.created or time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        header = {"format": RESULTS_FORMAT, "key": result.key, "checkpoint": result.checkpoint,
                  "cell": result.cell.id, "checkpoint_identity": result.checkpoint_identity,
                  "engine": result.engine, "task_version": result.task_version, "seed": result.seed,
                  "created": result.created, "n": len(result.samples), "mean": round(result.mean_points, 4),
                  "scorer_version": result.scorer_version, "longquant_version": result.longquant_version,
                  "rescored_from": result.rescored_from, "prompt": result.prompt}
        lines = [json.dumps(header, sort_keys=True, default=str)]
        lines += [json.dumps(asdict(s), ensure_ascii=False, sort_keys=True) for s in result.samples]
        write_text_atomic(path, "\n".join(lines) + "\n")
        result.path = str(path)
        return path

    def efficiency_path(self, checkpoint: str, key: str) -> Path:
        return self.root / "efficiency" / f"{checkpoint}-{key[:16]}.json"

    def save_efficiency(self, record: dict[str, Any]) -> Path:
        """One checkpoint stream's measured costs (evaluate.StreamMeter), replaced by the next run that streams it."""
        path = self.efficiency_path(record["checkpoint"], record["key"])
        write_text_atomic(path, json.dumps({"format": RESULTS_FORMAT, **record}, indent=2, sort_keys=True,
                                           default=str) + "\n")
        return path

    def write_summary(self, summary: dict[str, Any], name: str = "summary.json") -> Path:
        path = self.root / name
        write_text_atomic(path, json.dumps({"format": RESULTS_FORMAT, **summary}, indent=2, sort_keys=True,
                                           default=str) + "\n")
        return path


class ResultsError(LongquantError):
    """A results folder cannot be written."""
