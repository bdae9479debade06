"""A Markdown summary of a results folder's summary.json, short enough for a pull-request comment.

Reads results only (never an engine): the per-test rows the plugin writes (`lq_*`, the same as JUnit's properties).
Per candidate: its verdict, its failing cells first, each cell's delta with its confidence interval and its
recovery (candidate / reference, the Neural Magic framing) beside the absolute delta, then its language, bucket and
aggregate gates; then what was not gated and the baselines a run changed.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ..errors import LongquantError

_LEVEL_ORDER = {"cell": 0, "language": 1, "bucket": 2, "aggregate": 3}


class ReportError(LongquantError):
    """A results folder holds no summary that can be rendered."""


def load_summary(results_dir: str | Path) -> dict[str, Any]:
    path = Path(results_dir) / "summary.json"
    try:
        summary = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ReportError(f"{path} not found: point at a results folder of a finished run (results_dir in the "
                          "config, default .longquant/results)") from None
    except (OSError, ValueError) as exc:
        raise ReportError(f"{path} is not readable JSON ({exc}); run the gate again to rewrite it") from None
    if not isinstance(summary, dict) or not isinstance(summary.get("tests"), list):
        raise ReportError(f"{path} is not a longquant summary (no `tests` list)")
    return summary


def recovery(row: dict[str, Any]) -> str:
    """Candidate / reference, in percent ('-' where the reference scored 0)."""
    ref, cand = row.get("lq_reference"), row.get("lq_candidate")
    if not isinstance(ref, (int, float)) or not isinstance(cand, (int, float)) or ref <= 0:
        return "-"
    return f"{100 * cand / ref:.0f}%"


def _status(row: dict[str, Any]) -> str:
    status = row.get("lq_status", "")
    return {"fail": "**FAIL**", "pass": "pass"}.get(status, status or "?")


def _p(row: dict[str, Any]) -> str:
    p = row.get("lq_p_holm", row.get("lq_p"))
    if not isinstance(p, (int, float)):
        return "-"
    return "<1e-05" if p < 1e-5 else f"{p:.2g}"  # summary.json keeps 5 decimals


def _name(row: dict[str, Any]) -> str:
    level = row.get("lq_level", "cell")
    signal = row.get("lq_signal", "accuracy")
    return ("" if signal == "accuracy" else f"{signal} ") + {"language": "language ", "bucket": "bucket ",
                                                             "trend": "length trend of "}.get(level, "") + (
        row["lq_cell"].split("-", 1)[1] if level in ("language", "bucket", "trend") else row["lq_cell"])


def _result_header(path: str | None) -> dict[str, Any]:
    """The header line of a cell's result file (the checkpoint's identity, engine, versions, prompt style)."""
    try:
        with open(str(path), encoding="utf-8") as fh:
            header = json.loads(fh.readline())
    except (OSError, ValueError, TypeError):
        return {}
    return header if isinstance(header, dict) else {}


def _signal(row: dict[str, Any]) -> str:
    return row.get("lq_signal", "accuracy")


def _signal_table(rows: list[dict[str, Any]]) -> list[str]:
    """The divergence tests and length trends (docs/divergence.md), each in its own unit: the mean divergence (a
    slope for a trend) with its interval, never as points."""
    if not rows:
        return []
    rows = sorted(rows, key=lambda r: (r.get("lq_status") != "fail", r.get("lq_level") == "trend",
                                       _LEVEL_ORDER.get(r.get("lq_level", "cell"), 9), -r["lq_candidate"]))
    out = ["", "| divergence / trend | mean (trend: slope) | CI | unit | p (Holm) | tolerance | verdict |",
           "|---|---:|---|---|---:|---:|---|"]
    for r in rows:
        low, high = r.get("lq_ci_low"), r.get("lq_ci_high")
        ci = f"[{-high:.3g}, {-low:.3g}]" if isinstance(low, (int, float)) and isinstance(high, (int, float)) else "-"
        out.append(f"| {_name(r)} | {r['lq_candidate']:.3g} | {ci} | {r.get('lq_unit', '')} | {_p(r)} | "
                   f"{r.get('lq_tolerance', '-'):.3g} | {_status(r)} |")
    return out


def _run_section(run: dict[str, Any] | None, rows: list[dict[str, Any]]) -> list[str]:
    out = ["", "### Run", ""]
    if run:
        prompt = run.get("prompt", {})
        out.append(f"- config `{run.get('config')}`, reference {run.get('reference')}, engine {run.get('engine')} on "
                   f"{run.get('device')}, mode {run.get('mode')}, {run.get('samples')} samples per cell, seed "
                   f"{run.get('seed')}")
        out.append(f"- tasks {', '.join(run.get('tasks', []))}; buckets {', '.join(run.get('buckets', []))}; languages "
                   f"{', '.join(run.get('languages', []))}; system prompt {prompt.get('system_prompt')}, answer prefix "
                   f"{'on' if prompt.get('answer_prefix') else 'off'}")
    versions: dict[str, str] = {}
    for name in dict.fromkeys(r["lq_checkpoint"] for r in rows):
        header = next((h for r in rows if r["lq_checkpoint"] == name and (h := _result_header(r.get("lq_result_file")))),
                      {})
        if not header:
            continue
        identity, engine = header.get("checkpoint_identity", {}), header.get("engine", {})
        versions.update(engine.get("versions", {}))
        fingerprint = str(identity.get("fingerprint", ""))[:16] or "-"
        settings = ", ".join(f"{k}={v}" for k, v in sorted(engine.get("settings", {}).items())) or "defaults"
        recipe = f", recipe {identity['recipe']}" if identity.get("recipe") else ""
        out.append(f"- {name}: fingerprint `{fingerprint}`{recipe}; {engine.get('kind')} ({settings}) on "
                   f"{engine.get('device', '?')}")
    if versions:
        out.append("- versions: " + ", ".join(f"{k} {v}" for k, v in sorted(versions.items())))
    return out if len(out) > 3 else []


def _efficiency_section(efficiency: dict[str, Any]) -> list[str]:
    """One line per checkpoint measured in this folder (report/data.py's Efficiency)."""
    if not efficiency:
        return []
    out = ["", "### Efficiency (measured in the run)", "", "| checkpoint | engine | prompt tok/s | output tok/s | "
           "peak memory | weights saved | KV bytes/token |", "|---|---|---:|---:|---:|---:|---:|"]
    caveats = []
    for name, e in efficiency.items():
        peak = f"{e.peak_memory_bytes / 2**30:.2f} GiB {e.memory_kind}" if e.peak_memory_bytes else "-"
        saved = f"{e.weights_saved:.0f}%" if e.weights_saved is not None else "-"
        out.append(f"| {name} | {e.engine.get('kind')} on {e.engine.get('device')} | "
                   f"{e.prompt_tokens_per_second or 0:.0f} | {e.output_tokens_per_second or 0:.1f} | {peak} | {saved} | "
                   f"{e.kv_cache_bytes_per_token or '-'} |")
        caveats += [f"- {name}: {c}" for c in e.caveats]
    return out + (["", *caveats] if caveats else [])


def render_markdown(summary: dict[str, Any], efficiency: dict[str, Any] | None = None) -> str:
    rows = [r for r in summary["tests"] if "lq_checkpoint" in r]
    counts = summary.get("counts", {})
    out = ["## longquant gate: " + ", ".join(f"{counts[k]} {k}" for k in
                                              ("passed", "regressed", "error", "not gated", "missing baselines")
                                              if counts.get(k))]
    candidates = list(dict.fromkeys(r["lq_checkpoint"] for r in rows))
    verdicts = []
    for name in candidates:
        mine = [r for r in rows if r["lq_checkpoint"] == name]
        failed = [r for r in mine if r.get("lq_status") == "fail"]
        aggregate = next((r for r in mine if r.get("lq_level") == "aggregate" and "lq_delta" in r
                          and _signal(r) == "accuracy"), None)
        average = f"{aggregate['lq_delta']:+.1f} points, recovery {recovery(aggregate)}" if aggregate else "-"
        verdicts.append(f"| {name} | {'**FAIL**' if failed else 'pass'} | {len(failed)} of {len(mine)} | {average} |")
    out += ["", "| candidate | verdict | failing tests | average over its cells |", "|---|---|---|---|", *verdicts]
    for name in sorted(candidates, key=lambda n: not any(r.get("lq_status") == "fail" for r in rows
                                                          if r["lq_checkpoint"] == n)):
        every = [r for r in rows if r["lq_checkpoint"] == name and "lq_delta" in r]
        signals = [r for r in every if _signal(r) != "accuracy" or r.get("lq_level") == "trend"]
        mine = [r for r in every if r not in signals]
        mine.sort(key=lambda r: (r.get("lq_status") != "fail", _LEVEL_ORDER.get(r.get("lq_level", "cell"), 9),
                                 r["lq_delta"]))
        out += ["", f"### {name}", "", "| test | reference | candidate | delta | CI | recovery | flips -/+ | p (Holm) "
                "| tolerance | verdict |", "|---|---:|---:|---:|---|---:|---:|---:|---:|---|"]
        for r in mine:
            churn = f"-{r['lq_flips_lost']}/+{r['lq_flips_gained']}" if "lq_flips_lost" in r else "-"
            out.append(f"| {_name(r)} | {r['lq_reference']:.1f} | {r['lq_candidate']:.1f} | {r['lq_delta']:+.1f} | "
                       f"{r.get('lq_ci', '-')} | {recovery(r)} | {churn} | {_p(r)} | {r.get('lq_tolerance', '-')} | "
                       f"{_status(r)} |")
        out += _signal_table(signals)
    not_gated = summary.get("not_gated", [])
    if not_gated:
        out += ["", "### Not gated (never counted as passed)", ""]
        out += [f"- {ng['test']}: {ng['reason']}{' (allowed)' if ng.get('allowed') else ''}: {ng.get('detail', '')}"
                for ng in not_gated]
    changes = list(dict.fromkeys(r["lq_baseline_change"] for r in rows if r.get("lq_baseline_change")))
    if changes:
        out += ["", "### Baselines updated by this run", "", *[f"- {c}" for c in changes]]
    out += _efficiency_section(efficiency or {})
    out += _run_section(summary.get("run"), rows)
    out += ["", "Delta and CI in accuracy points (candidate - reference); recovery = candidate / reference; p adjusted "
            "by Holm over the candidate's planned family."]
    return "\n".join(out) + "\n"
