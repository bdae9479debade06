"""`longquant report` (a results folder as Markdown, HTML or JSON) and `compare` (two results folders side by side)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from ..storage import write_text_atomic
from .codes import PASSED, REGRESSED

FORMATS = {"markdown": "report.md", "html": "report.html", "json": "report.json"}


def render(results: str, fmt: str) -> str:
    from ..report.data import build_report

    report = build_report(results)
    if fmt == "markdown":
        from ..report.markdown import load_summary, render_markdown

        return render_markdown(load_summary(results), report.efficiency())
    if fmt == "json":
        return report.to_json()
    from ..report.html import render_html

    return render_html(report)


def report(results: str, fmt: str, output: str | None) -> int:
    if fmt == "all":
        folder = Path(output or results)
        for name, filename in FORMATS.items():
            write_text_atomic(folder / filename, render(results, name))
            print(f"wrote {folder / filename}", file=sys.stderr)
        return PASSED
    text = render(results, fmt)
    if output:
        write_text_atomic(Path(output), text)
        print(f"wrote {output}", file=sys.stderr)
    else:
        sys.stdout.write(text)
    return PASSED


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:+.1f}"


def compare(old: str, new: str, fmt: str, output: str | None) -> int:
    """Every test of either folder: its delta and verdict before and after. Exit 1 when a test that passed in OLD
    fails (or errs) in NEW: the candidate got worse between the two runs."""
    from ..report.data import build_report

    before, after = build_report(old), build_report(new)
    tests_before = {t.id: t for c in before.candidates for t in c.tests}
    tests_after = {t.id: t for c in after.candidates for t in c.tests}
    ids = list(dict.fromkeys([*tests_after, *tests_before]))
    rows = []
    for test_id in ids:
        a, b = tests_before.get(test_id), tests_after.get(test_id)
        change = None if a is None or b is None or a.delta is None or b.delta is None else round(b.delta - a.delta, 2)
        rows.append({"test": test_id, "old_status": a.status if a else "absent", "new_status": b.status if b else "absent",
                     "old_delta": a.delta if a else None, "new_delta": b.delta if b else None, "change": change})
    worse = [r for r in rows if r["old_status"] == "pass" and r["new_status"] in ("fail", "error")]
    rows.sort(key=lambda r: (r not in worse, r["old_status"] == r["new_status"], r["change"] or 0))
    if fmt == "json":
        text = json.dumps({"old": old, "new": new, "newly_failing": [r["test"] for r in worse], "tests": rows},
                          indent=2) + "\n"
    else:
        lines = [f"## longquant compare: {len(worse)} newly failing", "", f"old: `{old}`  new: `{new}`", "",
                 "| test | old | new | old delta | new delta | change |", "|---|---|---|---:|---:|---:|"]
        for r in rows:
            flag = " **newly failing**" if r in worse else ""
            lines.append(f"| {r['test']} | {r['old_status']} | {r['new_status']}{flag} | {_fmt(r['old_delta'])} | "
                         f"{_fmt(r['new_delta'])} | {_fmt(r['change'])} |")
        text = "\n".join(lines) + "\n"
    if output:
        write_text_atomic(Path(output), text)
    else:
        sys.stdout.write(text)
    return REGRESSED if worse else PASSED
