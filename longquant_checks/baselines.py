"""The baseline store: the reference's per-sample scores, committed under `baselines/`.

Keyed by our own semantic key (reference, engine setup, task, bucket, language), never by a pytest node id.
A baseline belongs to the engine setup that made it (setups.py: engine kind, dtype, device class, KV-cache dtype,
max length, RoPE overrides), so each candidate meets the reference's numbers from its own kind of engine.
One file per (reference, setup, task), `baselines/<reference>/<setup>/<task>.jsonl`, one entry per line sorted by
(bucket, language), so a refresh shows up as a reviewable line diff. Each sample keeps the reference's answer
text, so a changed scorer re-scores the baseline without running the model. Writes are atomic and made under a
file lock (several xdist workers may refresh entries of the same task file at once).
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

from filelock import FileLock

from .errors import LongquantError
from .results import CellResult
from .schema import Cell, Sample, bucket_label, parse_bucket
from .setups import setup_differences
from .storage import write_text_atomic

BASELINE_SCHEMA = 2


class BaselineError(LongquantError):
    """A baseline file is unreadable or was made from something else than what is being compared."""


@dataclass
class BaselineEntry:
    reference: str
    task: str
    bucket: int
    language: str
    n: int
    mean: float  # points
    samples: list[dict[str, Any]]  # {id, prompt_sha256, score, text}
    setup: dict[str, Any] = field(default_factory=dict)  # setups.SETUP_FIELDS
    engine: dict[str, Any] = field(default_factory=dict)
    device: str = ""
    versions: dict[str, str] = field(default_factory=dict)
    task_version: str = ""
    seed: int = 0
    date: str = ""
    reference_fingerprint: str = ""
    scorer_version: str = ""
    longquant_version: str = ""
    prompt: dict[str, Any] = field(default_factory=dict)  # the prompt style the reference answered
    schema: int = BASELINE_SCHEMA

    @property
    def cell(self) -> Cell:
        return Cell(self.task, self.bucket, self.language)

    @property
    def scores(self) -> list[float]:
        return [float(s["score"]) for s in self.samples]

    @property
    def has_traces(self) -> bool:
        """Whether every sample keeps the reference's token trace (the divergence signal's reference side)."""
        return bool(self.samples) and all("trace" in s for s in self.samples)

    def traces(self) -> dict[str, "TokenTrace"]:
        """Sample id -> the reference's answer trace (divergence.py)."""
        from .divergence import DivergenceError, TokenTrace

        try:
            return {s["id"]: TokenTrace.from_json(s["trace"], f"baseline {self.cell.id} sample {s['id']}")
                    for s in self.samples if "trace" in s}
        except DivergenceError as exc:
            raise BaselineError(str(exc)) from None

    def to_line(self) -> str:
        data = asdict(self)
        data["bucket"] = bucket_label(self.bucket)
        return json.dumps(data, sort_keys=True, ensure_ascii=False, separators=(",", ":"))

    @classmethod
    def from_line(cls, line: str, where: str) -> "BaselineEntry":
        try:
            data = json.loads(line)
            data["bucket"] = parse_bucket(data["bucket"])
            entry = cls(**data)
        except (ValueError, TypeError, KeyError) as exc:
            raise BaselineError(f"{where}: not a baseline entry ({exc}); restore it from version control or "
                                "delete the line and run with --lq-update-baselines=missing") from None
        if entry.schema != BASELINE_SCHEMA:
            raise BaselineError(f"{where}: baseline schema {entry.schema}, this version reads {BASELINE_SCHEMA}; "
                                "refresh with --lq-update-baselines=all")
        return entry

    @classmethod
    def from_result(cls, reference: str, result: CellResult, setup: dict[str, Any]) -> "BaselineEntry":
        engine = result.engine
        return cls(reference=reference, task=result.cell.task, bucket=result.cell.bucket,
                   language=result.cell.language, n=len(result.samples), mean=round(result.mean_points, 4),
                   samples=[{"id": s.id, "prompt_sha256": s.prompt_sha256, "score": s.score, "text": s.text,
                             **({"trace": s.trace} if s.trace else {})} for s in result.samples],
                   setup=dict(setup), engine={"kind": engine.get("kind"), "settings": engine.get("settings", {})},
                   device=engine.get("device", ""), versions=engine.get("versions", {}),
                   task_version=result.task_version, seed=result.seed,
                   date=time.strftime("%Y-%m-%d", time.gmtime()),
                   reference_fingerprint=result.checkpoint_identity.get("fingerprint", ""),
                   scorer_version=result.scorer_version, longquant_version=result.longquant_version,
                   prompt=dict(result.prompt))


def mismatches(entry: BaselineEntry, samples: Sequence[Sample], reference_fingerprint: str,
               setup: dict[str, Any], task_version: str) -> list[str]:
    """Why this baseline cannot be compared with these prompts on this setup; empty when it can."""
    problems = []
    if entry.task_version != task_version:
        problems.append(f"the task generator changed (baseline v{entry.task_version}, now v{task_version})")
    if entry.reference_fingerprint != reference_fingerprint:
        problems.append(f"the reference checkpoint changed (fingerprint {entry.reference_fingerprint[:12] or 'none'} "
                        f"in the baseline, {reference_fingerprint[:12]} now)")
    for name, stored, current in setup_differences(entry.setup, setup):
        problems.append(f"engine setup {name}: {stored!r} in the baseline, {current!r} in this run "
                        "(the reference's answers depend on it)")
    now = samples[0].metadata.get("prompt") if samples else None
    if entry.prompt and now and entry.prompt != now:
        problems.append(f"the prompt style changed ({describe_prompt(entry.prompt)} in the baseline, "
                        f"{describe_prompt(now)} now)")
    stored = [(s["id"], s["prompt_sha256"]) for s in entry.samples]
    current = [(s.id, s.prompt_sha256) for s in samples]
    if stored != current:
        if len(stored) != len(current):
            problems.append(f"the baseline has {len(stored)} samples, this run {len(current)} (samples per cell "
                            "changed)")
        else:
            differ = sum(a != b for a, b in zip(stored, current))
            problems.append(f"{differ} of {len(current)} prompts differ from the baseline's (prompt_sha256): "
                            "the tokenizer, seed, language data or corpus changed")
    return problems


def describe_prompt(prompt: dict[str, Any]) -> str:
    system = prompt.get("system_prompt")
    system = f"system prompt {system['text'][:40]!r}" if isinstance(system, dict) else f"system prompt {system}"
    return f"{system}, answer prefix {'on' if prompt.get('answer_prefix') else 'off'}"


def version_notes(entry: BaselineEntry, versions: dict[str, str], device: str,
                  settings: dict[str, Any] | None = None) -> list[str]:
    """Differences that may move scores but do not forbid the comparison: said, not hidden."""
    base = entry.engine.get("settings", {})
    notes = [f"engine setting {k}={base.get(k)!r} in the baseline, {v!r} now"
             for k, v in sorted((settings or {}).items()) if k in base and base[k] != v]
    notes += [f"{lib} {entry.versions[lib]} in the baseline, {v} now" for lib, v in sorted(versions.items())
             if lib in entry.versions and entry.versions[lib] != v]
    if entry.device and device and entry.device != device:
        notes.append(f"baseline made on {entry.device}, this run on {device}")
    return notes


class BaselineStore:
    """The baselines of one reference on one engine setup: `<root>/<reference>/<setup label>/<task>.jsonl`."""

    def __init__(self, root: Path, reference: str, setup_label: str):
        self.root = Path(root)
        self.reference = reference
        self.setup_label = setup_label
        self._cache: dict[str, dict[tuple[int, str], BaselineEntry]] = {}

    @property
    def folder(self) -> Path:
        return self.root / self.reference / self.setup_label

    def legacy_file(self, task: str) -> Path | None:
        """A baseline file of the layout before per-setup folders, if one is there (it records no setup)."""
        path = self.root / self.reference / f"{task}.jsonl"
        return path if path.is_file() else None

    def file_for(self, task: str) -> Path:
        return self.folder / f"{task}.jsonl"

    def _read(self, task: str) -> dict[tuple[int, str], BaselineEntry]:
        path = self.file_for(task)
        if not path.is_file():
            return {}
        entries = {}
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
            if line.strip():
                entry = BaselineEntry.from_line(line, f"{path}:{number}")
                entries[(entry.bucket, entry.language)] = entry
        return entries

    def load(self, task: str, refresh: bool = False) -> dict[tuple[int, str], BaselineEntry]:
        if refresh or task not in self._cache:
            self._cache[task] = self._read(task)
        return self._cache[task]

    def get(self, cell: Cell, refresh: bool = False) -> BaselineEntry | None:
        return self.load(cell.task, refresh).get((cell.bucket, cell.language))

    def _write(self, task: str, entries: dict[tuple[int, str], BaselineEntry]) -> None:
        path = self.file_for(task)
        if not entries:
            path.unlink(missing_ok=True)
        else:
            lines = [entries[k].to_line() for k in sorted(entries)]
            write_text_atomic(path, "\n".join(lines) + "\n")
        self._cache[task] = entries

    def put(self, entry: BaselineEntry) -> BaselineEntry | None:
        """Store `entry`; returns the entry it replaced (None if new). Read-modify-write under a lock."""
        self.folder.mkdir(parents=True, exist_ok=True)
        with FileLock(str(self.file_for(entry.task)) + ".lock"):
            entries = self._read(entry.task)
            old = entries.get((entry.bucket, entry.language))
            entries[(entry.bucket, entry.language)] = entry
            self._write(entry.task, entries)
        return old

    def cells(self) -> list[Cell]:
        if not self.folder.is_dir():
            return []
        return sorted(e.cell for f in sorted(self.folder.glob("*.jsonl")) for e in self.load(f.stem, True).values())

    def prune(self, keep: Iterable[Cell]) -> list[Cell]:
        """Remove entries for cells not in `keep`; returns what was removed."""
        keep = set(keep)
        removed = []
        for file in sorted(self.folder.glob("*.jsonl")) if self.folder.is_dir() else []:
            with FileLock(str(file) + ".lock"):
                entries = self._read(file.stem)
                gone = [k for k, e in entries.items() if e.cell not in keep]
                for k in gone:
                    removed.append(entries.pop(k).cell)
                if gone:
                    self._write(file.stem, entries)
        return sorted(removed)


def describe_change(old: BaselineEntry | None, new: BaselineEntry) -> str:
    """One line for the update report: what changed in this baseline entry."""
    cell = new.cell.id
    if old is None:
        return f"+ {cell}: new baseline, mean {new.mean:.1f} (n={new.n})"
    old_scores = {s["id"]: s["score"] for s in old.samples}
    changed = sum(1 for s in new.samples if old_scores.get(s["id"]) != s["score"])
    prompts = sum(1 for a, b in zip(old.samples, new.samples) if a["prompt_sha256"] != b["prompt_sha256"])
    parts = [f"mean {old.mean:.1f} -> {new.mean:.1f}", f"n {old.n} -> {new.n}" if old.n != new.n else f"n={new.n}",
             f"{changed} sample score(s) changed"]
    if prompts or len(old.samples) != len(new.samples):
        parts.append(f"{prompts} prompt(s) changed")
    if old.engine != new.engine:
        parts.append(f"engine {old.engine.get('kind')} -> {new.engine.get('kind')}")
    if old.scorer_version != new.scorer_version:
        parts.append(f"scorer v{old.scorer_version or '?'} -> v{new.scorer_version}")
    return f"~ {cell}: " + ", ".join(parts)
