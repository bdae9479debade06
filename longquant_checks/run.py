"""A gate run, without pytest (HELM's controller): wires the stages together for the plugin.

plan (plan.py: cases, not-gated reasons) -> checkpoints (lineup.py) -> samples (samples.py) -> baselines
(baseline_policy.py, per engine setup: setups.py) -> results (evaluate.py, one engine at a time) -> verdicts
(verdicts.py, Holm over the planned family) -> messages (messages.py). Everything here is plain Python; the plugin
maps it onto pytest items. A checkpoint's cases are decided together: the first test of a checkpoint that asks
runs the selected cells of that checkpoint (all in one worker under xdist loadgroup).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Callable, Sequence

from . import gate
from .baseline_policy import UPDATE_MODES, BaselineChoice, BaselinePolicy
from .baselines import BaselineStore, version_notes
from .checkpoints.info import context_length, yarn_overrides
from .checkpoints.recipes import get_recipe
from .checkpoints.resolve import ResolvedCheckpoint
from .config import Config, ConfigError, prompt_style
from .engines import divergence_unavailable, gpus_needed, resolve_device, visible_gpus
from .errors import LongquantError
from .evaluate import CheckpointRunner, RunnerPool
from .lineup import REFERENCE, Lineup
from .messages import RefreshCommands, failure_message, header, toml_inline
from .plan import (NOT_GATED_REASONS, Case, NotGated, PlannedCheckpoint, check_allowed, plan_cases, plan_cells,
                   resolve_buckets)
from .progress import Progress, as_progress
from .results import ResultStore
from .samples import SampleBook
from .schema import Cell, bucket_label
from .setups import EngineSetup, check_settings, reference_settings
from .tasks.base import TextSources
from .text.fitting import FitError
from .text.tokens import PromptTokenizer
from .divergence import SampleDivergence
from .noise_floor import DivergenceTolerances, NoiseFloor
from .verdicts import Family, Outcome, PairedCell, Tolerances, decide_checkpoint, decide_divergence, flips

__all__ = ["REFERENCE", "UPDATE_MODES", "Case", "GateRun", "Outcome"]


class GateRun:
    def __init__(self, config: Config, *, engine: str | None = None, limit: int | None = None,
                 seed: int | None = None, mode: str | None = None, tolerances: dict[str, float] | None = None,
                 baseline_dir: Path | None = None, update: str | None = None,
                 progress: Progress | Callable[[str], None] | None = None, allow_not_gated: Sequence[str] = (),
                 invocation: Sequence[str] = ()):
        g = config.gate
        self.config = config
        self.engine_kind = engine or g.engine
        self.n = min(g.samples, limit) if limit else g.samples
        self.limited = bool(limit and limit < g.samples)
        self.seed = g.seed if seed is None else seed
        self.mode = mode or g.mode
        if update is not None and update not in UPDATE_MODES:
            raise LongquantError(f"--lq-update-baselines={update!r}; accepted: {', '.join(UPDATE_MODES)}")
        self.update = update
        self.allowed_not_gated = set(check_allowed([*g.allow_not_gated, *allow_not_gated]))
        self.tolerances = Tolerances(
            cell={**gate.DEFAULT_CELL_TOLERANCE, **g.tolerance.cell, **(tolerances or {})},
            language={**gate.DEFAULT_LANGUAGE_TOLERANCE, **g.tolerance.language},
            bucket={**gate.DEFAULT_BUCKET_TOLERANCE, **g.tolerance.bucket},
            aggregate={**gate.DEFAULT_AGGREGATE_TOLERANCE, **g.tolerance.aggregate},
            rules=config.tolerance_rules())
        self.device = resolve_device(g.device) if self.engine_kind != "openai" else "server"
        self.results = ResultStore(config.results_dir)
        self.baseline_root = Path(baseline_dir or config.baseline_dir)
        self.progress = as_progress(progress)
        self.commands = RefreshCommands(tuple(invocation))
        self.lineup = Lineup(config, self.device, self.engine_for)
        self._check_engine_settings()
        self._check_gpus()
        self._book: SampleBook | None = None
        self._runners = RunnerPool()
        self._policies: dict[str, BaselinePolicy] = {}
        self._outcomes: dict[Case, Outcome] = {}

    def settings(self) -> dict:
        """What this run was asked to do, for its summary (read from the config only: nothing is loaded)."""
        g = self.config.gate
        return {"config": str(self.config.path), "reference": self.config.reference_name, "engine": self.engine_kind,
                "device": self.device, "mode": self.mode, "samples": self.n, "seed": self.seed,
                "tasks": list(g.tasks), "buckets": [bucket_label(b) for b in g.buckets],
                "languages": list(g.languages), "prompt": prompt_style(g).describe(),
                "candidates": [c.name for c in g.candidates]}

    def checkpoints_summary(self) -> dict:
        """What the run resolved of each checkpoint, for reports: precision, fingerprint, stored parameters and
        weights on disk (the reference's weight memory at a candidate's dtype is computed from its parameters)."""
        from .checkpoints.info import parameter_count
        from .meter import weights_on_disk

        try:  # the reference is resolved here even where only xdist workers ran (a local folder: cheap)
            self.reference
        except LongquantError:
            pass
        return {name: {"precision": c.precision, "fingerprint": c.fingerprint,
                       "recipe": c.recipe or (c.produced or {}).get("recipe"), "parameters": parameter_count(c.path),
                       "size_on_disk_bytes": weights_on_disk(c.path) or None}
                for name, c in self.lineup.resolved().items()}

    # -- what to run ---------------------------------------------------------------------------
    def checkpoint_names(self) -> list[str]:
        names = [REFERENCE] if self.config.gate.rerun_reference else []
        return names + [c.name for c in self.config.gate.candidates]

    def engine_for(self, name: str) -> str:
        if name == REFERENCE:
            return self.engine_kind
        return self.config.candidate(name).engine or self.engine_kind

    def _check_engine_settings(self) -> None:
        """Every engine setting is one its engine takes: checked before anything loads (else it would be ignored
        by the engine, yet enter the cache key)."""
        g = self.config.gate
        try:
            check_settings(self.engine_kind, {**g.engine_args, **g.reference.engine_args},
                           f"{self.config.path}: engine_args of the reference (engine {self.engine_kind})")
            for c in g.candidates:
                kind = self.engine_for(c.name)
                check_settings(kind, g.engine_args, f"{self.config.path}: the shared engine_args, used by candidate "
                                                    f"{c.name!r} (engine {kind}); put engine-specific keys on the "
                                                    "candidates that use that engine")
                check_settings(kind, c.engine_args, f"{self.config.path}: engine_args of candidate {c.name!r} "
                                                    f"(engine {kind})")
        except LongquantError as exc:
            raise ConfigError(str(exc)) from None

    def _check_gpus(self) -> None:
        """A GPU plan finds its GPUs here, or stops before anything loads: no CUDA at all, or a checkpoint whose
        tensor x pipeline x data parallel size exceeds the GPUs this process sees."""
        if not self.device.startswith("cuda"):
            return
        have = visible_gpus()
        shown = os.environ.get("CUDA_VISIBLE_DEVICES")
        seen = f" (CUDA_VISIBLE_DEVICES={shown})" if shown is not None else ""
        if have == 0:
            raise ConfigError(f"{self.config.path}: device = {self.config.gate.device!r}, but this machine shows no "
                              f"CUDA GPU{seen}: run the plan on a GPU machine, or set device = \"cpu\" (or \"auto\")")
        for name in [REFERENCE, *(c.name for c in self.config.gate.candidates)]:
            setup = self.setup_for(name)
            if setup.kind != "vllm":
                continue
            try:
                need = gpus_needed(setup.settings)
            except LongquantError as exc:
                raise ConfigError(f"{self.config.path}: engine_args of {name!r}: {exc}") from None
            if need > have:
                raise ConfigError(
                    f"{self.config.path}: {name!r} needs {need} GPUs (tensor x pipeline x data parallel size) but this "
                    f"process sees {have}{seen}; lower its parallel sizes, or give it more GPUs (under xdist each "
                    "worker gets GPUs / workers of them: use fewer workers)")

    def max_model_len(self) -> int | None:
        """The longest prompt + answer the plan may use: the shared max_model_len, capped by the positions the
        reference covers with the shared RoPE overrides (a longer max_model_len would only fail at engine start)."""
        args = {**self.config.gate.engine_args, **self.config.gate.reference.engine_args}
        covered = self._covered_positions()
        wanted = args.get("max_model_len") if isinstance(args.get("max_model_len"), int) else None
        return min(x for x in (covered, wanted) if x is not None) if (covered or wanted) else None

    def _covered_positions(self) -> int | None:
        """Positions the reference covers with the shared RoPE overrides (None: not a local checkpoint)."""
        g = self.config.gate
        return context_length(self.reference.path, {**g.engine_args, **g.reference.engine_args}.get("hf_overrides"))

    def _too_long_hint(self, limit: int | None) -> str:
        """The setting that would gate buckets past the model's own length (YaRN, shared by every checkpoint)."""
        g = self.config.gate
        longest = max(resolve_buckets(g.buckets))
        covered = self._covered_positions()
        if limit is None or covered is None or covered > limit:
            return ""  # the user's own max_model_len is the limit: nothing to suggest
        overrides = yarn_overrides(self.reference.path, longest)
        if not overrides:
            return ""
        return (f" without RoPE scaling; to gate up to {bucket_label(longest)}, extend every checkpoint of the gate "
                f"alike with YaRN (vLLM): engine_args = {{ max_model_len = {longest}, hf_overrides = "
                f"{toml_inline(overrides)} }} (docs/gpu.md)")

    def cases(self) -> list[Case]:
        """Every test, in a stable order (xdist needs identical collection on every worker)."""
        g = self.config.gate
        limit = self.max_model_len()
        cells = plan_cells(g.tasks, g.buckets, g.languages, limit, self._too_long_hint(limit))
        checkpoints = [PlannedCheckpoint(n, self.engine_for(n), None if n == REFERENCE else self.config.candidate(n).recipe)
                       for n in self.checkpoint_names()]
        d = g.divergence
        return plan_cases(checkpoints, cells, self.device, d.signal if d.enabled else None, d.enabled and d.trend)

    def allowed(self, not_gated: NotGated) -> bool:
        return not_gated.reason in self.allowed_not_gated

    # -- shared inputs ------------------------------------------------------------------------
    @property
    def reference(self) -> ResolvedCheckpoint:
        return self.lineup.reference

    def checkpoint(self, name: str) -> ResolvedCheckpoint:
        return self.lineup.get(name)

    @property
    def book(self) -> SampleBook:
        if self._book is None:
            g = self.config.gate
            sources = TextSources({k: str(self.config.resolve(v)) for k, v in g.corpora.items()},
                                  str(self.config.resolve(g.qa_file)) if g.qa_file else None)
            tok = PromptTokenizer.from_pretrained(self.reference.path, trust_remote_code=g.reference.trust_remote_code,
                                                  style=prompt_style(g))
            self._book = SampleBook(tok, self.n, self.seed, sources)
        return self._book

    def setup_for(self, name: str) -> EngineSetup:
        """The checkpoint's own setup: the shared engine_args and its own on top."""
        g = self.config.gate
        if name == REFERENCE:
            return self.reference_setup(self.engine_kind)
        c = self.config.candidate(name)
        return EngineSetup(self.engine_for(name), self.device, {**g.engine_args, **c.engine_args},
                           trust_remote_code=c.trust_remote_code)

    def reference_setup(self, kind: str) -> EngineSetup:
        """The reference on engine `kind`: the setup whose baselines candidates of that kind meet."""
        g = self.config.gate
        settings, _ = reference_settings(kind, g.engine_args, g.reference.engine_args)
        return EngineSetup(kind, self.device, settings, trust_remote_code=g.reference.trust_remote_code)

    def baseline_setup_for(self, name: str) -> EngineSetup:
        return self.reference_setup(self.engine_for(name))

    def baselines(self, setup: EngineSetup) -> BaselineStore:
        return self.policy(setup).store

    def policy(self, setup: EngineSetup) -> BaselinePolicy:
        label = setup.label()
        if label not in self._policies:
            store = BaselineStore(self.baseline_root, self.config.reference_name, label)
            # Traces are required where the reference's engine can make them; elsewhere (an OpenAI-compatible server)
            # the divergence cases are not gated, said per cell, and the accuracy baselines stand alone.
            traces = self.config.gate.divergence.enabled and divergence_unavailable(setup.kind) is None
            self._policies[label] = BaselinePolicy(store, setup.baseline_setup(), self.update, self.limited,
                                                   self.commands.refresh, traces=traces)
        return self._policies[label]

    @property
    def changes(self) -> list[str]:
        return [c for p in self._policies.values() for c in p.changes]

    def runner(self, name: str, setup: EngineSetup | None = None) -> CheckpointRunner:
        """This checkpoint's runner on `setup` (default: its own); the previous engine is released first."""
        setup = setup or self.setup_for(name)
        label = name if name != REFERENCE or setup.kind == self.engine_kind else f"{REFERENCE}@{setup.kind}"
        d = self.config.gate.divergence
        top_k = d.top_k if d.enabled and name == REFERENCE else 0  # the reference's runs make the baselines
        return self._runners.get((name, setup.label()), lambda: CheckpointRunner(
            self.checkpoint(name), setup, self.results, self.book, label=label, progress=self.progress, top_k=top_k))

    def close(self) -> None:
        self._runners.close()

    # -- deciding ---------------------------------------------------------------------------------
    def precision_of(self, name: str) -> str:
        if name == REFERENCE:
            return "16-bit"
        c = self.config.candidate(name)
        if c.precision:
            return c.precision
        if c.recipe:
            return get_recipe(c.recipe).precision
        return self.checkpoint(name).precision

    def outcome(self, case: Case, selected: Sequence[Case]) -> Outcome:
        """The case's outcome; the first call for a checkpoint decides all its selected cases."""
        if case not in self._outcomes:
            self._decide(case.checkpoint, [c for c in selected if c.checkpoint == case.checkpoint])
        return self._outcomes[case]

    def family(self, name: str) -> Family:
        return Family(tuple(c.cell for c in self.cases()  # each cell once (its divergence case is the same cell)
                            if c.checkpoint == name and c.level == "cell" and c.signal == "accuracy"
                            and c.not_gated is None))

    def _baseline(self, name: str, cell: Cell, ran: dict) -> BaselineChoice:
        setup = self.baseline_setup_for(name)
        task = self.book.task(cell.task)

        def run_reference(c: Cell, fresh: bool):
            found = ran.pop(c) if c in ran else self.runner(REFERENCE, setup).run(c, fresh=fresh)
            if isinstance(found, Exception):
                raise found
            return found

        return self.policy(setup).choose(cell, self.book.samples(cell), task, self.reference.fingerprint,
                                         run_reference)

    def _run_reference(self, name: str, cells: Sequence[Cell]) -> dict:
        """The reference's runs that the baseline policy will ask for, as one stream (before any candidate)."""
        setup = self.baseline_setup_for(name)
        policy = self.policy(setup)
        wanted = [c for c in cells if policy.wants_reference_run(c, self.book.samples(c), self.book.task(c.task),
                                                                 self.reference.fingerprint)]
        if not wanted or self.limited:  # a limited run never writes baselines: the policy says so per cell
            return {}
        return self.runner(REFERENCE, setup).run_many(wanted, fresh=self.update == "all")

    def _decide(self, name: str, selected: Sequence[Case]) -> None:
        for c in selected:
            if c.not_gated:
                self._outcomes[c] = Outcome(c, not_gated=c.not_gated)
        todo = []
        for c in selected:
            if c.level != "cell" or c.not_gated:
                continue
            try:
                self.book.samples(c.cell)
            except FitError as exc:
                self._outcomes[c] = Outcome(c, not_gated=NotGated("no-fit", str(exc)))
                continue
            todo.append(c)
        cells = list(dict.fromkeys(c.cell for c in todo))  # a cell's accuracy and divergence cases share one run
        # Baselines first (may run the reference), then the checkpoint: one model loaded at a time, each
        # checkpoint's cells as one stream.
        try:
            ran = self._run_reference(name, cells)
        except LongquantError as exc:
            ran = {c: exc for c in cells}
        choices: dict[Cell, BaselineChoice | str] = {}
        for cell in cells:
            try:
                choice = self._baseline(name, cell, ran)
            except LongquantError as exc:
                choices[cell] = str(exc)
                continue
            choices[cell] = choice.problem if choice.problem else choice
        baselines = {cell: ch for cell, ch in choices.items() if isinstance(ch, BaselineChoice)}
        forced = {}
        if self.config.gate.divergence.enabled:
            for cell, choice in list(baselines.items()):
                try:
                    forced.update(choice.entry.traces())
                except LongquantError as exc:
                    choices[cell] = str(exc)
                    del baselines[cell]
        try:
            results = self.runner(name).run_many(list(baselines), forced=forced) if baselines else {}
        except LongquantError as exc:  # the checkpoint itself cannot be resolved
            results = {cell: exc for cell in baselines}
        store = self.baselines(self.baseline_setup_for(name))
        paired, details, divergences = [], {}, {}
        for c in todo:
            choice = choices[c.cell]
            if isinstance(choice, str):
                self._outcomes[c] = Outcome(c, error=choice, baseline_file=str(store.file_for(c.cell.task)))
                continue
            result = results[c.cell]
            if isinstance(result, Exception):
                self._outcomes[c] = Outcome(c, error=f"{name}: {result}")
                continue
            notes = choice.notes + version_notes(choice.entry, result.engine.get("versions", {}),
                                                 result.engine.get("device", ""), result.engine.get("settings", {}))
            if result.rescored_from:
                notes.append(f"{name}'s stored outputs were re-scored (scorer v{result.rescored_from} -> "
                             f"v{result.scorer_version})")
            details[c] = dict(baseline_change=choice.change, notes=notes, result_file=result.path,
                              baseline_file=str(store.file_for(c.cell.task)),
                              seconds_per_sample=result.seconds_per_sample)
            if c.signal == "accuracy":
                ref_scores = {s["id"]: s["score"] for s in choice.entry.samples}
                paired.append(PairedCell(c, [ref_scores[s.id] for s in result.samples], result.scores,
                                         choice.entry.mean))
                details[c] = {**details[c], "flips": flips(ref_scores, [(s.id, s.score) for s in result.samples])}
                continue
            missing = [s.id for s in result.samples if s.divergence is None]
            if missing:
                why = (result.divergence_unavailable or divergence_unavailable(result.engine.get("kind", "hf"))
                       or f"{len(missing)} of {len(result.samples)} samples have no divergence measured")
                self._outcomes[c] = Outcome(c, not_gated=NotGated("no-logprobs", f"{name} {c.cell.id}: {why}"),
                                            **details[c])
                continue
            divergences[c] = [SampleDivergence.from_json(s.divergence).value(c.signal) for s in result.samples]
        self._decide_accuracy(name, selected, paired, details)
        self._decide_divergence(name, selected, divergences, details, paired)

    def _decide_accuracy(self, name: str, selected: Sequence[Case], paired: list, details: dict) -> None:
        levels = [c for c in selected if c.level not in ("cell", "trend") and c.signal == "accuracy"
                  and c not in self._outcomes]
        if not paired:  # nothing to average (and a broken checkpoint has no precision to ask for)
            for c in levels:
                self._outcomes[c] = Outcome(c, skip=f"none of the cells of {c.id} ran in this run")
            return
        precision = self.precision_of(name)
        g = self.config.gate
        decided = decide_checkpoint(name, precision, paired, levels, self.family(name), self.tolerances, self.mode,
                                    g.alpha, self.seed)
        for c, v in decided.items():
            if isinstance(v, str):
                self._outcomes[c] = Outcome(c, skip=v)
            else:
                self._outcomes[c] = Outcome(c, verdict=v, **details.get(c, {}))

    def _decide_divergence(self, name: str, selected: Sequence[Case], divergences: dict, details: dict,
                           paired: list) -> None:
        """The divergence signal's cases and the length trends (divergence_gate.py), beside the accuracy ones."""
        levels = [c for c in selected if (c.signal != "accuracy" or c.level == "trend") and c.level != "cell"
                  and c not in self._outcomes]
        if not divergences and not any(c.level == "trend" for c in levels):
            for c in levels:
                self._outcomes[c] = Outcome(c, skip=f"none of the cells of {c.id} ran in this run")
            return
        precision = self.precision_of(name)
        decided = decide_divergence(name, precision, divergences, paired, levels, self.family(name),
                                    self.divergence_tolerances(name), self.mode, self.config.gate.alpha, self.seed,
                                    self.config.gate.divergence.signal)
        for c, v in decided.items():
            if isinstance(v, str):
                self._outcomes[c] = Outcome(c, skip=v)
            else:
                self._outcomes[c] = Outcome(c, verdict=v, **details.get(c, {}))

    def divergence_tolerances(self, name: str) -> DivergenceTolerances:
        """The divergence tolerances of this checkpoint's precision: the config's allowances (else the defaults)
        over the noise floor stored beside the baselines its reference setup made (none: the allowance alone)."""
        d = self.config.gate.divergence
        floor = NoiseFloor.load(self.baselines(self.baseline_setup_for(name)).folder)
        return DivergenceTolerances.build(self.precision_of(name), d, floor)

    def measure_noise_floor(self) -> tuple[Path, NoiseFloor]:
        """The reference teacher-forced on its own stored traces over the planned cells (another batch shape than
        the one that made them), stored as noise_floor.json beside those baselines."""
        from .divergence import SIGNALS

        setup = self.reference_setup(self.engine_kind)
        store = self.baselines(setup)
        cells = [c.cell for c in self.cases() if c.checkpoint == self.checkpoint_names()[-1] and c.level == "cell"
                 and c.signal == "accuracy" and not c.not_gated] if self.config.gate.candidates else []
        if not cells:
            raise LongquantError("the plan has no cell to measure a noise floor on (it needs a candidate and cells)")
        forced = {}
        for cell in cells:
            entry = store.get(cell)
            if entry is None or not entry.has_traces:
                raise LongquantError(f"no baseline with token traces for {cell.id} in {store.file_for(cell.task)}: "
                                     "turn on [divergence] in the config and run `longquant baseline --mode failed` "
                                     "first")
            forced.update(entry.traces())
        runner = CheckpointRunner(self.reference, setup, self.results, self.book, label="reference-floor",
                                  progress=self.progress)
        try:
            results = runner.run_many(cells, forced=forced)
        finally:
            runner.close()
        per_cell = {}
        for cell, result in results.items():
            if isinstance(result, Exception):
                raise LongquantError(f"noise floor, {cell.id}: {result}")
            measured = [SampleDivergence.from_json(s.divergence) for s in result.samples if s.divergence]
            if not measured:
                raise LongquantError(f"noise floor, {cell.id}: {result.divergence_unavailable or 'nothing measured'}")
            per_cell[cell.id] = {sig: [d.value(sig) for d in measured] for sig in SIGNALS}
        floor = NoiseFloor.measure(per_cell, f"{self.config.reference_name} on {setup.label()}: teacher-forced "
                                   "one sample at a time against its traces from batched generation",
                                   self.reference.fingerprint, self.seed)
        return floor.save(store.folder), floor

    # -- messages ---------------------------------------------------------------------------------
    def failure_message(self, o: Outcome) -> str:
        return failure_message(o, self.precision_of(o.case.checkpoint), self.commands)

    def not_gated_message(self, o: Outcome) -> str:
        ng = o.not_gated
        return (f"NOT GATED ({ng.reason}: {NOT_GATED_REASONS[ng.reason]}): {ng.detail}. This planned case did not "
                f"run, so it is not counted as passed. If that is intended, allow it: "
                f"`--lq-allow-not-gated={ng.reason}` or `allow_not_gated = [\"{ng.reason}\"]` in "
                f"{self.config.path or 'the config'}; or take it out of the plan")

    def header(self) -> str:
        return header(self)
