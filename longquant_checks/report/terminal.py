"""The end-of-session summary: candidates x tasks and bucket x language tables of delta vs baseline, and counts.

Rows are the per-test `lq_*` user properties (what the xdist controller and JUnit XML also see).
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any

from ..schema import bucket_label


def _mean(values: list[float]) -> float:
    return sum(values) / len(values)


def _cell(values: list[float], failed: bool) -> tuple[str, dict[str, bool]]:
    if not values:
        return "·", {}
    delta = _mean(values)
    markup = {"red": True, "bold": True} if failed else {"green": True} if delta >= -1e-9 else {"yellow": True}
    return f"{delta:+.1f}{'!' if failed else ''}", markup


def _table(tw, title: str, rows: list[str], cols: list[str], data: dict, failed: dict) -> None:
    width = max([len(r) for r in rows] + [len(title)]) + 2
    colw = max([len(c) for c in cols] + [7]) + 1
    tw.write_line(title.ljust(width) + "".join(c.rjust(colw) for c in cols))
    for r in rows:
        tw.write(r.ljust(width))
        for c in cols:
            text, markup = _cell(data.get((r, c), []), failed.get((r, c), False))
            tw.write(text.rjust(colw), **markup)
        tw.write("\n")


def write_summary(terminalreporter, rows: list[dict[str, Any]], summary: dict[str, Any]) -> None:
    tr = terminalreporter
    tr.write_sep("=", "longquant summary: delta vs baseline, accuracy points (! = regressed)")
    cells = [r for r in rows if r.get("lq_level", "cell") == "cell" and "lq_delta" in r
             and r.get("lq_signal", "accuracy") == "accuracy"]
    by_task: dict = defaultdict(list)
    by_task_failed: dict = {}
    by_bl: dict = defaultdict(list)
    by_bl_failed: dict = {}
    for r in cells:
        key = (r["lq_checkpoint"], r["lq_task"])
        by_task[key].append(r["lq_delta"])
        by_task_failed[key] = by_task_failed.get(key, False) or r["lq_status"] == "fail"
        key2 = (f"{r['lq_checkpoint']} {bucket_label(int(r['lq_bucket']))}", r["lq_language"])
        by_bl[key2].append(r["lq_delta"])
        by_bl_failed[key2] = by_bl_failed.get(key2, False) or r["lq_status"] == "fail"
    checkpoints = list(dict.fromkeys(r["lq_checkpoint"] for r in rows))
    if cells:
        tasks = list(dict.fromkeys(r["lq_task"] for r in cells))
        _table(tr, "candidate \\ task", checkpoints, tasks, by_task, by_task_failed)
        tr.write_line("")
        langs = list(dict.fromkeys(r["lq_language"] for r in cells))
        bl_rows = list(dict.fromkeys(k for k, _ in by_bl))
        _table(tr, "candidate bucket \\ language", bl_rows, langs, by_bl, by_bl_failed)
        tr.write_line("")
    for r in rows:
        level = r.get("lq_level", "cell")
        signal = r.get("lq_signal", "accuracy")
        if level != "cell" and "lq_delta" in r:
            failed = r["lq_status"] == "fail"
            mark = {"red": True, "bold": True} if failed else {"green": True}
            what = "over its cells" if level == "aggregate" else f"over its {r['lq_cell'].replace('-', ' ')} cells"
            if level == "trend":
                tr.write_line(f"{r['lq_checkpoint']}: {signal} {r['lq_cell'].replace('-', ' of ')}: slope "
                              f"{-r['lq_delta']:+.3g} {r.get('lq_unit', '')}, tolerance {r['lq_tolerance']:g}: "
                              f"{'REGRESSED' if failed else 'ok'}", **mark)
            elif signal != "accuracy":
                tr.write_line(f"{r['lq_checkpoint']}: mean {signal} {r['lq_candidate']:.3g} {r.get('lq_unit', '')} "
                              f"{what}, tolerance {r['lq_tolerance']:.3g}: {'REGRESSED' if failed else 'ok'}", **mark)
            else:
                tr.write_line(f"{r['lq_checkpoint']}: average delta {r['lq_delta']:+.2f} points {r['lq_ci']} {what}, "
                              f"tolerance {r['lq_tolerance']:g}: {'REGRESSED' if failed else 'ok'}", **mark)
    changes = [r["lq_baseline_change"] for r in rows if r.get("lq_baseline_change")]
    if changes:
        tr.write_line("baselines updated:")
        for line in dict.fromkeys(changes):
            tr.write_line(f"  {line}")
    stale = [f"{r['lq_checkpoint']}-{r['lq_cell']}" for r in rows if r.get("lq_stale")]
    if stale:
        tr.write_line(f"beat the baseline by more than the tolerance (stale baseline?): {', '.join(stale)}", yellow=True)
    for ng in summary.get("not_gated", []):
        tr.write_line(f"not gated ({ng['reason']}{', allowed' if ng['allowed'] else ''}): {ng['test']}: {ng['detail']}",
                      **({"yellow": True} if ng["allowed"] else {"red": True}))
    counts = summary.get("counts", {})
    order = ("passed", "regressed", "error", "not gated", "skipped", "missing baselines", "updated",
             "stale baselines", "unused")
    tr.write_line("longquant: " + ", ".join(f"{counts.get(k, 0)} {k}" for k in order))
