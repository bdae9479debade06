"""One self-contained HTML file of a gate run: figures are inline SVG, styles inline, no script, no network.

Sections: verdicts, where each candidate degrades (Delta heatmaps over bucket x language per task), accuracy vs
length (reference beside candidates), every test with its interval and recovery, the largest drops with their
per-sample outputs, efficiency with the trade-off plot and caveats, the run's settings and versions.
"""

from __future__ import annotations

from html import escape
from typing import Any, Iterable

from . import plots
from .data import Drop, Efficiency, Report, Test

_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:2rem auto;max-width:1200px;color:#222;
padding:0 1rem}
h1{font-size:1.6rem}h2{margin-top:2.2rem;border-bottom:1px solid #ddd;padding-bottom:.3rem}
table{border-collapse:collapse;margin:.6rem 0;font-size:.88rem}
th,td{border:1px solid #ddd;padding:.25rem .5rem;text-align:right}th{background:#f4f4f4}
td.l,th.l{text-align:left}.fail{color:#b00020;font-weight:bold}.pass{color:#1b7f3b}
.error,.not-gated{color:#a15c00;font-weight:bold}.figs{display:flex;flex-wrap:wrap;gap:1rem;align-items:flex-start}
.figs svg{max-width:100%;height:auto}pre{white-space:pre-wrap;word-break:break-word;background:#f7f7f7;
padding:.4rem;margin:.2rem 0;font-size:.8rem}.note{color:#555;font-size:.85rem}
details{margin:.3rem 0}summary{cursor:pointer}.lost{background:#fdecea}.gained{background:#e8f5e9}
"""


def _e(value: Any) -> str:
    return escape("" if value is None else str(value))


def _f(value: float | None, fmt: str = "{:+.1f}", none: str = "-") -> str:
    return none if value is None else fmt.format(value)


def _status(status: str) -> str:
    css = {"fail": "fail", "pass": "pass", "error": "error", "not gated": "not-gated"}.get(status, "")
    return f'<span class="{css}">{_e(status.upper() if status == "fail" else status)}</span>'


def _bytes(n: int | None) -> str:
    if not n:
        return "-"
    return f"{n / 2**30:.2f} GiB" if n >= 2**30 else f"{n / 2**20:.0f} MiB" if n >= 2**20 else f"{n} B"


def _table(head: Iterable[str], rows: Iterable[Iterable[str]], left: int = 1) -> str:
    head = list(head)
    out = ["<table><tr>" + "".join(f'<th class="{"l" if i < left else ""}">{_e(h)}</th>' for i, h in enumerate(head))
           + "</tr>"]
    for row in rows:
        out.append("<tr>" + "".join(f'<td class="{"l" if i < left else ""}">{cell}</td>' for i, cell in enumerate(row))
                   + "</tr>")
    return "\n".join(out) + "</table>"


def _anchor(test_id: str) -> str:
    return "drop-" + "".join(ch if ch.isalnum() else "-" for ch in test_id)


def _tests_table(tests: list[Test], drops: set[str]) -> str:
    rows = []
    for t in tests:
        name = _e(t.id.split("-", 1)[1])
        if t.id in drops:
            name = f'<a href="#{_anchor(t.id)}">{name}</a>'
        detail = _e(t.error or (f"not gated: {t.not_gated}" if t.not_gated else ""))
        if t.signal != "accuracy" or t.level == "trend":  # a divergence (a trend: a slope) in its own unit
            ci = "-" if t.ci_low is None else f"[{-t.ci_high:.3g}, {-t.ci_low:.3g}]"
            rows.append([name, _e(f"{t.signal} {t.level}"), "-", _f(t.candidate, "{:.3g}") + f" {_e(t.unit)}", "-",
                         ci, "-", _f(t.p_holm, "{:.2g}"), _f(t.tolerance, "{:.3g}"), _e(t.n),
                         _status(t.status) + (f'<div class="note">{detail}</div>' if detail else "")])
            continue
        ci = "-" if t.ci_low is None else f"[{t.ci_low:+.1f}, {t.ci_high:+.1f}]"
        rows.append([name, _e(t.level), _f(t.reference, "{:.1f}"), _f(t.candidate, "{:.1f}"), _f(t.delta), ci,
                     _f(t.recovery, "{:.0f}%"), _f(t.p_holm, "{:.2g}"), _f(t.tolerance, "{:.1f}"), _e(t.n),
                     _status(t.status) + (f'<div class="note">{detail}</div>' if detail else "")])
    return _table(["test", "level", "reference", "candidate", "delta", "CI", "recovery", "p (Holm)", "tolerance", "n",
                   "verdict"], rows, left=2)


def _drop_section(drop: Drop) -> str:
    out = [f'<h3 id="{_anchor(drop.test)}">{_e(drop.test)}: {drop.delta:+.1f} points ({_e(drop.status)})</h3>']
    for s in drop.samples:
        ref = s.reference_score
        css = "lost" if ref is not None and s.candidate_score < ref else "gained" if ref is not None and \
            s.candidate_score > ref else ""
        label = (f"{_e(s.id)}: reference {_f(ref, '{:.2f}')}, candidate {s.candidate_score:.2f} "
                 f"({s.n_prompt_tokens} prompt tokens)")
        out.append(f'<details class="{css}"><summary>{label}</summary>'
                   f"<div>expected: <b>{_e(' | '.join(s.expected))}</b></div>"
                   f"<div>reference answered:</div><pre>{_e(s.reference_answer if s.reference_answer is not None else '(not stored in the baseline)')}</pre>"
                   f"<div>candidate answered:</div><pre>{_e(s.candidate_answer)}</pre>"
                   f"<div>prompt head:</div><pre>{_e(s.prompt_head)}</pre>"
                   + (f"<div>prompt tail:</div><pre>{_e(s.prompt_tail)}</pre>" if s.prompt_tail else "")
                   + "</details>")
    return "\n".join(out)


def _efficiency_rows(items: list[tuple[str, Efficiency | None]]) -> list[list[str]]:
    rows = []
    for name, e in items:
        if e is None:
            rows.append([_e(name)] + ["-"] * 10 + ['<span class="note">no measurement: its cells came from another '
                                                   "results folder or were not run</span>"])
            continue
        per_sample = ", ".join(f"{b} {v:.2f} s" for b, v in e.seconds_per_sample.items())
        reported = e.engine_reported
        engine_range = ""
        if reported.get("prompt_tokens_per_second") and reported.get("output_tokens_per_second"):
            (low, high), (out_low, out_high) = reported["prompt_tokens_per_second"], reported["output_tokens_per_second"]
            engine_range = f"prompt {low:.0f}-{high:.0f}, output {out_low:.1f}-{out_high:.1f}"
        rows.append([_e(name), _e(f"{e.engine.get('kind')} {e.engine.get('version', '')} on {e.engine.get('device')}"),
                     _f(e.prompt_tokens_per_second, "{:.0f}"), _e(engine_range), _f(e.output_tokens_per_second, "{:.1f}"),
                     _e(per_sample), _e(_bytes(e.peak_memory_bytes)) + f' <span class="note">{_e(e.memory_kind)}</span>',
                     _e(_bytes(e.weights_memory_bytes)), _f(e.weights_saved, "{:.0f}%"), _e(_bytes(e.size_on_disk_bytes)),
                     _e(e.kv_cache_bytes_per_token if e.kv_cache_bytes_per_token else "-"), _e(e.samples)])
    return rows


def _efficiency(report: Report) -> str:
    items = [(c.name, c.efficiency) for c in report.candidates]
    if report.reference_efficiency is not None and all(c.name != "reference" for c in report.candidates):
        items.insert(0, ("reference", report.reference_efficiency))
    out = [_table(["checkpoint", "engine", "prompt tok/s", "engine's own range", "output tok/s", "s / sample",
                   "peak memory", "weights in memory", "weights saved", "on disk", "KV bytes / token", "samples"],
                  _efficiency_rows(items), left=2)]
    out.append('<p class="note">tok/s: tokens over the wall time of the checkpoint\'s stream (as vLLM\'s throughput '
               "benchmark counts them: prefill and decode overlap). Weights saved: against the reference's parameters "
               "at the same dtype.</p>")
    svg = plots.tradeoff(report)
    if svg:
        out.append(f'<div class="figs">{svg}</div>')
    notes = []
    for name, e in items:
        if e is None:
            continue
        notes += [f"<li><b>{_e(name)}</b>: {_e(c)}</li>" for c in e.caveats]
        notes.append(f"<li><b>{_e(name)}</b>: memory: {_e(e.memory_note)}; KV cache: {_e(e.kv_cache_note)}</li>")
    if notes:
        out.append("<h3>What these figures mean (caveats)</h3><ul>" + "\n".join(notes) + "</ul>")
    return "\n".join(out)


def render_html(report: Report) -> str:
    counts = ", ".join(f"{v} {k}" for k, v in report.counts.items() if v)
    drops = {d.test for d in report.largest_drops}
    verdict_rows = [[_e(c.name), _e(c.precision or "-"), _status(c.verdict), f"{c.failing} of {len(c.tests)}",
                     _f(c.average_delta), _f(c.average_recovery, "{:.0f}%")] for c in report.candidates]
    body = [f"<h1>longquant gate: {_e(counts)}</h1>",
            f'<p class="note">results folder {_e(report.results_dir)}; config {_e(report.run.get("config"))}; '
            f"reference {_e(report.run.get('reference'))}</p>",
            "<h2>Verdicts</h2>",
            _table(["candidate", "precision", "verdict", "failing tests", "average delta", "average recovery"],
                   verdict_rows)]
    tasks = list(dict.fromkeys(t.task for c in report.candidates for t in c.tests if t.task))
    body.append("<h2>Where it degrades: delta over bucket x language</h2>")
    body.append('<p class="note">Blue: the candidate scores higher, red: lower; outlined: the cell fails the gate.</p>')
    languages, limit = plots.languages_of(report), plots.delta_limit(report)
    for task in tasks:  # one row per task, the candidates side by side on one colour scale
        figs = [plots.heatmap(c, task, languages, limit) for c in report.candidates
                if any(t.task == task and t.level == "cell" and t.signal == "accuracy" for t in c.tests)]
        body.append(f"<h3>{_e(task)}</h3><div class=\"figs\">{''.join(figs)}</div>")
    body.append("<h2>Accuracy vs input length</h2>")
    body.append('<div class="figs">' + "".join(plots.curves(report, task) for task in tasks) + "</div>")
    body.append("<h2>Every test</h2>")
    body.append('<p class="note">Delta and CI in accuracy points (candidate - reference); recovery = candidate / '
                "reference; p adjusted by Holm over the candidate's planned family.</p>")
    for c in report.candidates:
        body.append(f"<h3>{_e(c.name)} ({_status(c.verdict)})</h3>" + _tests_table(c.tests, drops))
    if report.not_gated:
        body.append("<h2>Not gated (never counted as passed)</h2><ul>" + "".join(
            f"<li>{_e(ng.get('test'))}: {_e(ng.get('reason'))}{' (allowed)' if ng.get('allowed') else ''}: "
            f"{_e(ng.get('detail'))}</li>" for ng in report.not_gated) + "</ul>")
    body.append("<h2>Largest drops, sample by sample</h2>")
    if report.largest_drops:
        body.append('<p class="note">Red: a sample the candidate lost; green: one it gained. Open a sample for its '
                    "prompt's head and tail, the expected answer and both answers.</p>")
        body += [_drop_section(d) for d in report.largest_drops]
    else:
        body.append("<p>No cell dropped.</p>")
    body.append("<h2>Efficiency, measured in the same run</h2>")
    body.append(_efficiency(report))
    body.append("<h2>Run settings and versions</h2>")
    settings = [[_e(k), f"<code>{_e(v)}</code>"] for k, v in report.run.items()]
    body.append(_table(["setting", "value"], settings, left=2))
    ckpts = [[_e(n), _e(i.get("precision")), f"<code>{_e(str(i.get('fingerprint', ''))[:16])}</code>",
              _e(i.get("recipe") or "-"), _e(i.get("parameters") or "-"), _e(_bytes(i.get("size_on_disk_bytes")))]
             for n, i in report.checkpoints.items()]
    if ckpts:
        body.append(_table(["checkpoint", "precision", "fingerprint", "recipe", "stored parameters", "on disk"], ckpts,
                           left=4))
    body.append(_table(["library", "version"], [[_e(k), _e(v)] for k, v in sorted(report.versions.items())], left=2))
    if report.baseline_changes:
        body.append("<h3>Baselines updated by this run</h3><ul>" + "".join(f"<li>{_e(c)}</li>"
                                                                          for c in report.baseline_changes) + "</ul>")
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<title>longquant gate: {_e(counts)}</title><style>{_CSS}</style></head><body>\n"
            + "\n".join(body) + "\n</body></html>\n")
