"""What the gate says: the run header, failure messages, and the exact commands that fix or refresh a cell.

Every command printed here does, run as printed, what its text says (the plugin suite runs them): it repeats the
user's own pytest invocation with the update mode and the cell's selection.
"""

from __future__ import annotations

import os
import shlex
from dataclasses import dataclass
from typing import TYPE_CHECKING

from . import gate
from .schema import Cell, bucket_label
from .setups import library_versions, longquant_version, reference_settings

if TYPE_CHECKING:
    from .run import GateRun
    from .verdicts import Outcome

_SELECTING = ("-k", "--lq-update-baselines", "--lq-limit")


@dataclass(frozen=True)
class RefreshCommands:
    invocation: tuple[str, ...]  # the pytest arguments of this run

    def pytest(self, *extra: str) -> str:
        """This run's command line without its selection and update options, plus `extra`."""
        args, given = [], iter(self.invocation)
        for arg in given:
            name, eq, _ = arg.partition("=")
            if name in _SELECTING:
                if not eq:
                    next(given, None)  # the value is the next argument
                continue
            if arg.startswith("-k"):  # -kEXPR
                continue
            args.append(arg)
        return shlex.join(["python", "-m", "pytest", *args, *extra])

    def refresh(self, mode: str, cell: Cell) -> str:
        """Re-run the reference for `cell` with update mode `mode` (and every candidate's test of that cell)."""
        return self.pytest(f"--lq-update-baselines={mode}", "-k", cell.id)


def failure_message(o: Outcome, precision: str, commands: RefreshCommands) -> str:
    v = o.verdict
    lines = [gate.format_failure(v)]
    if o.baseline_file:
        lines.append(f"baseline: {o.baseline_file}")
    if o.result_file:
        lines.append(f"per-sample outputs: {o.result_file}")
    lines += [f"note: {n}" for n in o.notes]
    cell = o.case.cell
    if cell is not None:
        lines.append("to accept this drop for this cell, add to the config:\n"
                     f"  [[tolerance.rules]]\n  task = \"{cell.task}\"\n  bucket = \"{bucket_label(cell.bucket)}\"\n"
                     f"  language = \"{cell.language}\"\n  precision = \"{precision}\"\n"
                     f"  points = {max(v.tolerance.points, -v.delta) + 0.5:.1f}")
        lines.append(f"if the reference or its engine changed instead, re-run the reference on this cell and "
                     f"overwrite its baseline: {commands.refresh('all', cell)}")
    return "\n".join(lines)


def header(run: GateRun) -> str:
    versions = {k: v for kind in ("hf", "vllm", "openai") for k, v in library_versions(kind).items()}
    versions["longquant-checks"] = longquant_version()
    versions["llmcompressor"] = "own env (" + (os.environ.get("LONGQUANT_QUANT_PYTHON") or ".venv-quant") + ")"
    g = run.config.gate
    lines = [f"longquant: config {run.config.path}, reference {run.config.reference_name}, "
             f"{len(g.candidates)} candidate(s), engine {run.engine_kind} on {run.device}, mode {run.mode}, "
             f"n={run.n}, seed={run.seed}"]
    kinds = dict.fromkeys(run.engine_for(n) for n in [*run.checkpoint_names(), "reference"])
    for kind in kinds:
        setup = run.reference_setup(kind)
        _, left_out = reference_settings(kind, g.engine_args, g.reference.engine_args)
        lines.append(f"longquant: baselines for engine {kind}: {run.baseline_root / run.config.reference_name / setup.label()}"
                     + (f" (reference engine_args not taken by {kind}: {', '.join(left_out)})" if left_out else ""))
    remote = [n for n, on in [("reference", g.reference.trust_remote_code),
                              *((c.name, c.trust_remote_code) for c in g.candidates)] if on]
    lines.append("longquant: trust_remote_code: " + (f"ON for {', '.join(remote)} (their code runs here)" if remote
                                                     else "off"))
    if run.allowed_not_gated:
        lines.append(f"longquant: not-gated cases allowed for: {', '.join(sorted(run.allowed_not_gated))}")
    lines.append("longquant versions: " + ", ".join(f"{k} {v}" for k, v in sorted(versions.items())))
    return "\n".join(lines)


def toml_inline(value) -> str:
    """A value as a TOML inline literal, for settings the messages tell users to paste into their config."""
    if isinstance(value, dict):
        return "{ " + ", ".join(f"{k} = {toml_inline(v)}" for k, v in value.items()) + " }"
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(toml_inline(v) for v in value) + "]"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    return repr(value)
