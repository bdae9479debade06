"""`longquant` command line: thin over the library and the pytest plugin. Exit codes: cli/codes.py, docs/cli.md.

  longquant run [--config C] [-n N] [-- PYTEST ARGS]   the gate for a config
  longquant baseline [--mode missing|failed|all]       refresh the reference's baselines
  longquant demo                                       the embedded default gate (fixtures/longquant.toml)
  longquant quantize RECIPE [--model M]                a recipe's checkpoint into the cache; prints its path
  longquant noise-floor [--config C]                   the divergence signal's floor, stored beside the baselines
  longquant report RESULTS [--format ...]              a results folder as Markdown / HTML / JSON
  longquant compare OLD NEW                            two results folders side by side
  longquant tasks | languages                          what exists
  longquant suite --model M                            the task suite built with a model's tokenizer
"""

from __future__ import annotations

import argparse

from ..errors import LongquantError
from .codes import CONFIG_ERROR, INTERRUPTED

_EPILOG = ("exit codes: 0 passed; 1 regressions or not-gated cells; 2 usage or config error (missing baselines "
           "included); 3 infrastructure error (an engine crashed or could not start); 130 interrupted")


def _gate_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", help="longquant.toml or pyproject.toml with [tool.longquant] (default: found in the "
                                    "current folder)")
    p.add_argument("-n", "--workers", help="pytest-xdist workers (a number, or auto: one GPU slice each)")
    p.add_argument("pytest_args", nargs=argparse.REMAINDER,
                   help="after --: passed to pytest as they are (e.g. -- -k nf4 --lq-limit 5)")


def parser() -> argparse.ArgumentParser:
    from .reports import FORMATS
    from .suite import DEMO_N, add_suite_args

    top = argparse.ArgumentParser(prog="longquant", description=__doc__.split("\n")[0], epilog=_EPILOG,
                                  formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = top.add_subparsers(dest="command", required=True, metavar="VERB")
    run = sub.add_parser("run", help="the gate for a config (pytest underneath)", epilog=_EPILOG)
    _gate_args(run)
    baseline = sub.add_parser("baseline", help="re-run the reference and rewrite baselines", epilog=_EPILOG)
    _gate_args(baseline)
    baseline.add_argument("--mode", default="missing", choices=["missing", "failed", "all"],
                          help="missing: only cells without one; failed: missing or mismatched; all: every selected cell")
    demo = sub.add_parser("demo", help="the embedded default gate: demo reference, an 8-bit and a 4-bit CPU "
                                       "candidate, both signals",
                          epilog=_EPILOG)
    demo.add_argument("-n", "--workers", help="pytest-xdist workers")
    demo.add_argument("pytest_args", nargs=argparse.REMAINDER, help="after --: passed to pytest")
    quantize = sub.add_parser("quantize", help="produce a recipe's checkpoint into the cache and print its path")
    quantize.add_argument("recipe", nargs="?", help="e.g. gptq-w4a16, fp8-dynamic (see --list)")
    quantize.add_argument("--model", default="demo", help="the reference: local path, hub id or `demo` (default)")
    quantize.add_argument("--config", help="with --candidate: that candidate of this config, with its calibration")
    quantize.add_argument("--candidate", help="a candidate name of --config")
    quantize.add_argument("--list", action="store_true", help="list the recipes")
    floor = sub.add_parser("noise-floor", help="measure the divergence signal's noise floor (the reference against "
                                               "its own stored traces) and store it beside the baselines")
    floor.add_argument("--config", help="longquant.toml (default: found in the current folder)")
    report = sub.add_parser("report", help="render a results folder as Markdown, HTML or JSON")
    report.add_argument("results", help="the results folder (results_dir of the config; has summary.json)")
    report.add_argument("--format", default="markdown", choices=[*FORMATS, "all"],
                        help="markdown (a PR comment), html (one self-contained file), json (versioned, "
                             "docs/report.md), all (the three into -o FOLDER, default the results folder)")
    report.add_argument("-o", "--output", default=None, help="write to this file (folder with --format all)")
    compare = sub.add_parser("compare", help="two results folders side by side (exit 1 if a test got newly failing)")
    compare.add_argument("old")
    compare.add_argument("new")
    compare.add_argument("--format", default="markdown", choices=["markdown", "json"])
    compare.add_argument("-o", "--output", default=None)
    sub.add_parser("tasks", help="list tasks with descriptions")
    sub.add_parser("languages", help="list languages")
    suite = sub.add_parser("suite", help="build the task suite with a model's tokenizer and summarize it")
    suite.add_argument("--model", required=True, help="local checkpoint path, hub id, or `demo`")
    suite.add_argument("--trust-remote-code", action="store_true", help="allow the tokenizer's own code (opt-in)")
    suite.add_argument("--no-chat-template", action="store_true", help="plain prompts for base models")
    add_suite_args(suite, {"n": DEMO_N})
    prune = sub.add_parser("prune-samples", help="delete cached sample sets not used for a number of days")
    prune.add_argument("--unused-days", type=float, required=True, help="age in days since a set was last used")
    return top


def _passthrough(args: argparse.Namespace) -> list[str]:
    extra = list(args.pytest_args or [])
    return extra[1:] if extra[:1] == ["--"] else extra


def main(argv: list[str] | None = None) -> int:
    from .suite import console

    try:
        args = parser().parse_args(argv)
    except SystemExit as exc:  # argparse: --help exits 0, a usage error 2
        return int(exc.code or 0)
    try:
        return _dispatch(args)
    except LongquantError as exc:
        console.print(f"[bold red]error:[/] {exc}", highlight=False)
        return CONFIG_ERROR
    except KeyboardInterrupt:
        console.print("[yellow]interrupted[/]")
        return INTERRUPTED


def _dispatch(args: argparse.Namespace) -> int:
    from . import gate, reports, suite

    if args.command in ("run", "baseline"):
        return gate.run_gate(gate._config_path(args.config), _passthrough(args),
                             update=args.mode if args.command == "baseline" else None, workers=args.workers)
    if args.command == "demo":
        return gate.run_gate(gate.demo_config(), _passthrough(args), workers=args.workers)
    if args.command == "quantize":
        return gate.list_recipes() if args.list else gate.quantize(args.recipe, args.model, args.config,
                                                                  args.candidate)
    if args.command == "noise-floor":
        return gate.noise_floor(gate._config_path(args.config))
    if args.command == "report":
        return reports.report(args.results, args.format, args.output)
    if args.command == "compare":
        return reports.compare(args.old, args.new, args.format, args.output)
    if args.command == "tasks":
        return suite.list_tasks()
    if args.command == "languages":
        return suite.list_languages()
    if args.command == "prune-samples":
        from ..samples import prune_samples

        files, size = prune_samples(args.unused_days)
        suite.console.print(f"removed {files} sample sets ({size / 2**20:.1f} MiB) unused for {args.unused_days:g} days")
        return 0
    return suite.suite(args)

