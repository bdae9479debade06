"""`longquant suite`, `tasks`, `languages`: what the task suite builds for a model's tokenizer, and what exists."""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections import defaultdict
from pathlib import Path

from rich.console import Console
from rich.table import Table

from ..errors import LongquantError
from ..schema import bucket_label

console = Console()

DEMO_BUCKETS = ["1K", "2K", "4K", "8K"]  # the demo model's context is 8192 tokens
DEMO_N = 3


def _csv(value: str) -> list[str]:
    return [v.strip() for v in value.split(",") if v.strip()]


def add_suite_args(p: argparse.ArgumentParser, defaults: dict) -> None:
    p.add_argument("--tasks", type=_csv, default=defaults.get("tasks"), help="comma-separated task names, or all")
    p.add_argument("--buckets", type=_csv, default=defaults.get("buckets"), help="e.g. 1K,4K,32K, or all")
    p.add_argument("--languages", type=_csv, default=defaults.get("languages"), help="e.g. en,de,zh, or all")
    p.add_argument("-n", "--samples", type=int, default=defaults.get("n", DEMO_N), help="samples per cell")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--corpus", action="append", default=[], metavar="LANG=FOLDER",
                   help="use a folder of UTF-8 .txt files as the prose haystack of LANG (repeatable)")
    p.add_argument("--qa-file", default=None, help="JSONL of {documents, question, answers} for qa_1/qa_2")
    p.add_argument("--no-cache", action="store_true", help="rebuild samples instead of reading the cache")
    p.add_argument("--show-prompt", default=None, metavar="CELL",
                   help="cell id whose first prompt to print (default: the first cell)")


def list_tasks() -> int:
    from ..tasks.base import get_task, task_names

    table = Table("task", "version", "metric", "description")
    for name in task_names():
        task = get_task(name)
        table.add_row(name, task.version, task.metric, task.description)
    console.print(table)
    return 0


def list_languages() -> int:
    from ..text.haystack import builtin_source
    from ..text.languages import LANGUAGES, load_language

    table = Table("code", "language", "direction", "none", "prose sentences")
    for code in LANGUAGES:
        lang = load_language(code)
        table.add_row(code, lang.name, lang.direction, " / ".join(lang.none),
                      str(len(builtin_source(lang, "prose").sentences)))
    console.print(table)
    return 0


def suite(args: argparse.Namespace) -> int:
    from ..checkpoints.demo import resolve_model_source
    from ..checkpoints.info import max_context_length
    from ..plan import plan_cells
    from ..samples import load_or_generate
    from ..tasks.base import TextSources, get_task
    from ..text.fitting import FitError
    from ..text.tokens import PromptTokenizer

    corpora = {}
    for item in args.corpus:
        lang, sep, folder = item.partition("=")
        if not sep:
            raise LongquantError(f"--corpus expects LANG=FOLDER, got {item!r}")
        corpora[lang] = folder
    sources = TextSources(corpora=corpora, qa_file=args.qa_file)
    source = resolve_model_source(args.model)
    tok = PromptTokenizer.from_pretrained(source, use_chat_template=not args.no_chat_template,
                                          trust_remote_code=args.trust_remote_code)
    max_len = max_context_length(source)
    planned = plan_cells(args.tasks, args.buckets, args.languages, max_len)
    run = [p.cell for p in planned if p.skip_reason is None]
    skipped = [p for p in planned if p.skip_reason]
    console.print(f"model [bold]{args.model}[/] -> {source}\ntokenizer fingerprint {tok.fingerprint[:16]}, "
                  f"max length {max_len or 'unknown'}; {len(run)} cells x {args.samples} samples, seed {args.seed}"
                  + (f"; {len(skipped)} cells skipped ({skipped[0].skip_reason})" if skipped else ""))
    tasks = {name: get_task(name, sources) for name in {c.task for c in run}}
    fill: dict[tuple[str, int], list[float]] = defaultdict(list)
    first = {}
    built = cached = 0
    unfit: list[str] = []
    t0 = time.perf_counter()
    from rich.progress import Progress

    with Progress(console=console, transient=True) as progress:
        bar = progress.add_task("building samples", total=len(run))
        for cell in list(run):
            try:
                samples, hit = load_or_generate(tasks[cell.task], cell, tok, args.samples, args.seed,
                                                use_cache=not args.no_cache)
            except FitError as exc:  # fixed parts longer than the bucket in this tokenizer
                unfit.append(str(exc))
                run.remove(cell)
                progress.advance(bar)
                continue
            cached += len(samples) if hit else 0
            built += 0 if hit else len(samples)
            for s in samples:
                fill[(cell.task, cell.bucket)].append((s.n_tokens + s.max_new_tokens) / cell.bucket)
            first.setdefault(cell.id, samples[0])
            progress.advance(bar)
    seconds = time.perf_counter() - t0

    buckets = sorted({c.bucket for c in run})
    table = Table(title="lowest fill: (prompt + generation budget) / bucket, % over languages and samples")
    table.add_column("task")
    for b in buckets:
        table.add_column(bucket_label(b), justify="right")
    table.add_column("gen budget", justify="right")
    for name in dict.fromkeys(c.task for c in run):  # the plan's (RULER's) order
        row = [name]
        for b in buckets:
            vals = fill.get((name, b))
            row.append(f"{100 * min(vals):.2f}" if vals else "-")
        budgets = sorted({s.max_new_tokens for cid, s in first.items() if s.cell.task == name})
        row.append(str(budgets[0]) if len(budgets) == 1 else f"{budgets[0]}-{budgets[-1]}")
        table.add_row(*row)
    console.print(table)
    all_fill = [v for vals in fill.values() for v in vals]
    console.print(f"{len(run)} cells, {built + cached} samples ({built} built, {cached} from cache) in {seconds:.1f} s; "
                  f"fill min {100 * min(all_fill):.2f}%, mean {100 * statistics.mean(all_fill):.2f}%, "
                  f"max {100 * max(all_fill):.2f}%")
    for reason in unfit:
        console.print(f"[yellow]skipped[/] {reason}", highlight=False)
    shown = first.get(args.show_prompt) if args.show_prompt else next(iter(first.values()))
    if shown is None:
        raise LongquantError(f"--show-prompt: no cell {args.show_prompt!r} in this run")
    text = shown.prompt_text
    excerpt = text if len(text) < 1600 else text[:800] + "\n[... middle of the context omitted ...]\n" + text[-600:]
    console.rule(f"sample prompt {shown.id}: {shown.n_tokens} prompt tokens + {shown.max_new_tokens} to generate")
    console.print(excerpt, markup=False, highlight=False)
    console.rule()
    console.print(f"answers: {shown.answers}", markup=False, highlight=False)
    return 0


