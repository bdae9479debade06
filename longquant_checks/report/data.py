"""A results folder read into one report (the JSON summary's schema): what every format renders.

Reads results only, never an engine: `summary.json` (the plugin's per-test rows), the cells' result files
(per-sample answers), the baselines they were compared with (the reference's answers) and the efficiency records
(meter.py). The pydantic models below are the documented, versioned schema of `longquant report --format json`
(docs/report.md); `REPORT_VERSION` changes whenever a field changes meaning or disappears.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, Field

from ..schema import BUCKETS
from .markdown import ReportError, load_summary

REPORT_SCHEMA = "longquant-report"
REPORT_VERSION = 2  # 2: tests of the divergence signal and length trends (`signal`, `unit`, level "trend")
_LEVEL_ORDER = {"cell": 0, "language": 1, "bucket": 2, "aggregate": 3, "trend": 4}


class Test(BaseModel):
    """One gate test: a cell, or a candidate's language / bucket / aggregate average. Points are accuracy x 100."""

    id: str = Field(description="`candidate-task-bucket-lang`, `candidate-language-xx`, `candidate-bucket-8K` or "
                                "`candidate-aggregate`")
    checkpoint: str
    level: Literal["cell", "language", "bucket", "aggregate", "trend"]
    signal: str = Field("accuracy", description="accuracy, or the divergence signal (kl, nll, top1): then reference "
                                                "is 0, candidate the mean divergence, delta its negative, in `unit`")
    unit: str = Field("points", description="the unit of reference, candidate, delta, interval and tolerance")
    status: str = Field(description="pass, fail, error, not gated or skipped")
    task: str | None = None
    bucket: str | None = None
    language: str | None = None
    n: int | None = Field(None, description="paired samples")
    reference: float | None = Field(None, description="reference accuracy, points")
    candidate: float | None = Field(None, description="candidate accuracy, points")
    delta: float | None = Field(None, description="candidate - reference, points")
    ci_low: float | None = None
    ci_high: float | None = None
    recovery: float | None = Field(None, description="candidate / reference, percent (None where the reference "
                                                      "scored 0)")
    p: float | None = Field(None, description="one-sided p-value, candidate worse")
    p_holm: float | None = Field(None, description="p adjusted by Holm over the candidate's planned family")
    tolerance: float | None = Field(None, description="allowed drop, points")
    tolerance_source: str | None = None
    error: str | None = None
    not_gated: str | None = Field(None, description="why a planned case did not run (never counted as passed)")
    result_file: str | None = None
    baseline_file: str | None = None
    flips_lost: list[str] = Field(default_factory=list, description="sample ids correct in the reference, wrong "
                                                                     "in the candidate (accuracy cells)")
    flips_gained: list[str] = Field(default_factory=list, description="sample ids wrong in the reference, correct "
                                                                       "in the candidate (accuracy cells)")


class SampleView(BaseModel):
    """One prompt, both models' answers to it."""

    id: str
    expected: list[str]
    reference_answer: str | None = Field(None, description="None: the baseline holds no text for this sample")
    reference_score: float | None = None
    candidate_answer: str
    candidate_score: float
    prompt_head: str = ""
    prompt_tail: str = ""
    n_prompt_tokens: int = 0


class Drop(BaseModel):
    """A cell with one of the largest drops, with its per-sample outputs (the samples that changed score first)."""

    test: str
    checkpoint: str
    delta: float
    status: str
    samples: list[SampleView]


class Efficiency(BaseModel):
    """One checkpoint's measured costs in the run that produced its results (meter.py)."""

    checkpoint: str
    engine: dict[str, Any]
    samples: int
    wall_seconds: float
    engine_start_seconds: float | None = None
    prompt_tokens_per_second: float | None = Field(None, description="prompt tokens / wall seconds of the stream")
    output_tokens_per_second: float | None = Field(None, description="output tokens / wall seconds of the stream")
    seconds_per_sample: dict[str, float] = Field(default_factory=dict, description="per bucket label")
    peak_memory_bytes: int | None = None
    memory_kind: str | None = Field(None, description="cuda (GPU memory) or rss (resident host memory)")
    memory_note: str = ""
    weights_memory_bytes: int | None = Field(None, description="the weights as the engine holds them")
    size_on_disk_bytes: int | None = None
    kv_cache_bytes_per_token: int | None = None
    kv_cache_note: str = ""
    engine_reported: dict[str, Any] = Field(default_factory=dict)
    weights_saved: float | None = Field(None, description="1 - weights memory / the reference's at the same dtype, "
                                                          "percent")
    caveats: list[str] = Field(default_factory=list)
    created: str = ""


class Candidate(BaseModel):
    name: str
    verdict: Literal["pass", "fail", "error", "not gated", "no tests"]
    precision: str | None = None
    failing: int
    tests: list[Test]
    average_delta: float | None = Field(None, description="the aggregate test's delta, points")
    average_recovery: float | None = None
    efficiency: Efficiency | None = None


class Report(BaseModel):
    """A gate run, for dashboards: `schema`/`version` identify this layout (docs/report.md)."""

    schema_: str = Field(REPORT_SCHEMA, alias="schema")
    version: int = REPORT_VERSION
    results_dir: str
    counts: dict[str, int]
    run: dict[str, Any] = Field(default_factory=dict, description="the run's settings (config, engine, plan)")
    versions: dict[str, str] = Field(default_factory=dict, description="library versions the results came from")
    checkpoints: dict[str, Any] = Field(default_factory=dict, description="fingerprint, precision, parameters and "
                                                                          "size on disk per checkpoint")
    candidates: list[Candidate]
    reference_efficiency: Efficiency | None = None
    largest_drops: list[Drop]
    not_gated: list[dict[str, Any]] = Field(default_factory=list)
    baseline_changes: list[str] = Field(default_factory=list)

    model_config = {"populate_by_name": True}

    def efficiency(self) -> dict[str, Efficiency]:
        """Each checkpoint's measured costs, the reference first where it ran in this folder."""
        found = {"reference": self.reference_efficiency} if self.reference_efficiency else {}
        return {**found, **{c.name: c.efficiency for c in self.candidates if c.efficiency}}

    def to_json(self) -> str:
        return self.model_dump_json(by_alias=True, indent=2) + "\n"


def _num(row: dict, key: str) -> float | None:
    value = row.get(key)
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def _recovery(ref: float | None, cand: float | None) -> float | None:
    return None if ref is None or cand is None or ref <= 0 else round(100 * cand / ref, 1)


def _ci(row: dict) -> tuple[float | None, float | None]:
    low, high = _num(row, "lq_ci_low"), _num(row, "lq_ci_high")
    if low is None and isinstance(row.get("lq_ci"), str):  # summaries written before lq_ci_low existed
        try:
            low, high = (float(x) for x in row["lq_ci"].strip("[]").split(","))
        except ValueError:
            pass
    return low, high


def _test(row: dict) -> Test:
    level = row.get("lq_level", "cell")
    bucket = row.get("lq_bucket")
    label = next((k for k, v in BUCKETS.items() if v == bucket), bucket) if isinstance(bucket, int) else bucket
    rest = str(row.get("lq_cell", ""))
    task = row.get("lq_task")
    if level == "language":
        language, label = rest.split("-", 1)[1], None
    elif level == "bucket":
        label, language = rest.split("-", 1)[1], None
    elif level == "trend":
        task, label, language = rest.split("-", 1)[1], None, None
    else:
        language = row.get("lq_language")
    low, high = _ci(row)
    ref, cand = _num(row, "lq_reference"), _num(row, "lq_candidate")
    signal = row.get("lq_signal", "accuracy")
    prefix = row["lq_checkpoint"] if signal == "accuracy" else f"{row['lq_checkpoint']}-{signal}"
    return Test(id=f"{prefix}-{rest}", checkpoint=row["lq_checkpoint"], level=level, signal=signal,
                unit=row.get("lq_unit", "points"),
                status=row.get("lq_status", "?"), task=task, bucket=label, language=language,
                n=row.get("lq_n"), reference=ref, candidate=cand, delta=_num(row, "lq_delta"), ci_low=low,
                ci_high=high, recovery=_recovery(ref, cand) if signal == "accuracy" and level != "trend" else None, p=_num(row, "lq_p"), p_holm=_num(row, "lq_p_holm"),
                tolerance=_num(row, "lq_tolerance"), tolerance_source=row.get("lq_tolerance_source"),
                error=row.get("lq_error"), not_gated=row.get("lq_not_gated"), result_file=row.get("lq_result_file"),
                baseline_file=row.get("lq_baseline_file"), flips_lost=(row.get("lq_flips") or {}).get("lost", []),
                flips_gained=(row.get("lq_flips") or {}).get("gained", []))


def _read_jsonl(path: str | None) -> tuple[dict, list[dict]]:
    """A result file's header and sample lines ({} and [] where it is gone or unreadable)."""
    try:
        lines = Path(str(path)).read_text(encoding="utf-8").splitlines()
        return json.loads(lines[0]), [json.loads(line) for line in lines[1:] if line.strip()]
    except (OSError, ValueError, IndexError, TypeError):
        return {}, []


def _baseline_samples(path: str | None, test: Test) -> dict[str, dict]:
    """The reference's per-sample entries of this cell in a baseline file."""
    try:
        lines = Path(str(path)).read_text(encoding="utf-8").splitlines()
    except (OSError, TypeError):
        return {}
    for line in lines:
        try:
            entry = json.loads(line)
        except ValueError:
            continue
        if entry.get("bucket") == test.bucket and entry.get("language") == test.language:
            return {s["id"]: s for s in entry.get("samples", []) if isinstance(s, dict) and "id" in s}
    return {}


def _drop(test: Test, per_cell: int) -> Drop:
    _, samples = _read_jsonl(test.result_file)
    reference = _baseline_samples(test.baseline_file, test)
    views = []
    for s in samples:
        ref = reference.get(s.get("id"), {})
        views.append(SampleView(id=s.get("id", "?"), expected=s.get("answers", []), reference_answer=ref.get("text"),
                                reference_score=ref.get("score"), candidate_answer=s.get("text", ""),
                                candidate_score=s.get("score", 0.0), prompt_head=s.get("prompt_head", ""),
                                prompt_tail=s.get("prompt_tail", ""), n_prompt_tokens=s.get("n_prompt_tokens", 0)))
    # The samples the candidate lost first, then those it gained, then the rest.
    views.sort(key=lambda v: 0 if v.candidate_score < (v.reference_score or 0) else
               1 if v.candidate_score > (v.reference_score or 0) else 2)
    return Drop(test=test.id, checkpoint=test.checkpoint, delta=test.delta or 0.0, status=test.status,
                samples=views[:per_cell])


def _efficiency(results_dir: Path, fingerprints: dict[str, str]) -> dict[str, Efficiency]:
    """The newest efficiency record per checkpoint whose fingerprint is the one its results came from."""
    found: dict[str, dict] = {}
    for path in sorted((results_dir / "efficiency").glob("*.json")):
        try:
            record = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        name = record.get("checkpoint")
        if name not in fingerprints or record.get("fingerprint") != fingerprints[name]:
            continue
        if name not in found or record.get("created", "") > found[name].get("created", ""):
            found[name] = record
    out = {}
    for name, r in found.items():
        out[name] = Efficiency(
            checkpoint=name, engine=r.get("engine", {}), samples=r.get("samples", 0),
            wall_seconds=r.get("wall_seconds", 0.0), engine_start_seconds=r.get("engine_start_seconds"),
            prompt_tokens_per_second=r.get("prompt_tokens_per_second"),
            output_tokens_per_second=r.get("output_tokens_per_second"),
            seconds_per_sample={b: v.get("seconds_per_sample", 0.0) for b, v in r.get("buckets", {}).items()},
            peak_memory_bytes=r.get("peak_memory_bytes"), memory_kind=r.get("memory_kind"),
            memory_note=r.get("memory_note", ""), weights_memory_bytes=r.get("weights_memory_bytes"),
            size_on_disk_bytes=r.get("size_on_disk_bytes"), kv_cache_bytes_per_token=r.get("kv_cache_bytes_per_token"),
            kv_cache_note=r.get("kv_cache_note", ""), engine_reported=r.get("engine_reported", {}),
            caveats=r.get("caveats", []), created=r.get("created", ""))
    return out


_DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}


def _weights_saved(eff: Efficiency, reference: dict[str, Any]) -> float | None:
    """1 - the candidate's weight memory / the reference's at the candidate engine's dtype, in percent."""
    dtype = str(eff.engine.get("settings", {}).get("dtype", "")).removeprefix("torch.")
    params = reference.get("parameters")
    if not eff.weights_memory_bytes or not params or dtype not in _DTYPE_BYTES:
        return None
    return round(100 * (1 - eff.weights_memory_bytes / (params * _DTYPE_BYTES[dtype])), 1) + 0.0  # no -0.0


def build_report(results_dir: str | Path, drops: int = 6, samples_per_drop: int = 8) -> Report:
    results_dir = Path(results_dir)
    summary = load_summary(results_dir)
    rows = [r for r in summary["tests"] if isinstance(r, dict) and "lq_checkpoint" in r and "lq_cell" in r]
    if not rows:
        raise ReportError(f"{results_dir / 'summary.json'} holds no gate tests: the run selected none")
    tests = [_test(r) for r in rows]
    fingerprints, versions = {}, {}
    for t in tests:
        header, _ = _read_jsonl(t.result_file) if t.result_file and t.checkpoint not in fingerprints else ({}, [])
        if header:
            fingerprints[t.checkpoint] = header.get("checkpoint_identity", {}).get("fingerprint")
            versions.update(header.get("engine", {}).get("versions", {}))
    checkpoints = summary.get("checkpoints", {}) if isinstance(summary.get("checkpoints"), dict) else {}
    for name, info in checkpoints.items():
        fingerprints.setdefault(name, info.get("fingerprint"))
    efficiency = _efficiency(results_dir, fingerprints)
    reference_info = checkpoints.get("reference", {})
    candidates = []
    for name in dict.fromkeys(t.checkpoint for t in tests):
        mine = sorted((t for t in tests if t.checkpoint == name),
                      key=lambda t: (t.status != "fail", _LEVEL_ORDER[t.level], t.delta if t.delta is not None else 0))
        statuses = {t.status for t in mine}
        verdict = ("fail" if "fail" in statuses else "error" if "error" in statuses else
                   "not gated" if any(t.not_gated for t in mine) else "pass" if "pass" in statuses else "no tests")
        aggregate = next((t for t in mine if t.level == "aggregate" and t.signal == "accuracy" and t.delta is not None),
                         None)
        eff = efficiency.get(name)
        if eff is not None:
            eff.weights_saved = _weights_saved(eff, reference_info)
        precision = checkpoints.get(name, {}).get("precision") or next(
            (r["lq_precision"] for r in rows if r["lq_checkpoint"] == name and r.get("lq_precision")), None)
        candidates.append(Candidate(name=name, verdict=verdict, precision=precision,
                                    failing=sum(t.status == "fail" for t in mine), tests=mine,
                                    average_delta=aggregate.delta if aggregate else None,
                                    average_recovery=aggregate.recovery if aggregate else None, efficiency=eff))
    cells = [t for t in tests if t.level == "cell" and t.signal == "accuracy" and t.delta is not None
             and t.result_file]
    cells.sort(key=lambda t: t.delta)
    largest = [_drop(t, samples_per_drop) for t in cells[:drops] if t.delta < 0]
    changes = list(dict.fromkeys(r["lq_baseline_change"] for r in rows if r.get("lq_baseline_change")))
    return Report(results_dir=str(results_dir), counts={k: int(v) for k, v in summary.get("counts", {}).items()},
                  run=summary.get("run") or {}, versions=versions, checkpoints=checkpoints, candidates=candidates,
                  reference_efficiency=efficiency.get("reference"), largest_drops=largest,
                  not_gated=summary.get("not_gated", []), baseline_changes=changes)


def report_json_schema() -> dict[str, Any]:
    """The JSON Schema of `Report` (committed as docs/report.schema.json; a test keeps the two equal)."""
    return Report.model_json_schema(by_alias=True)
