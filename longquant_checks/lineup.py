"""The run's reference and candidates, each resolved once: downloaded, produced (llmcompressor recipes, cached) or
checked. A broken one is the same error for every test that needs it, while the session goes on with the others."""

from __future__ import annotations

from typing import Callable

from .checkpoints.produce import CalibrationSpec
from .checkpoints.resolve import ResolvedCheckpoint, resolve
from .config import Config
from .errors import LongquantError

REFERENCE = "reference"


class Lineup:
    def __init__(self, config: Config, device: str, engine_for: Callable[[str], str]):
        self.config, self.device, self.engine_for = config, device, engine_for
        self._resolved: dict[str, ResolvedCheckpoint | LongquantError] = {}

    @property
    def reference(self) -> ResolvedCheckpoint:
        if REFERENCE not in self._resolved:
            ref = self.config.gate.reference
            # The reference failing is everyone's problem: raised, not kept, so it is retried by nobody silently.
            self._resolved[REFERENCE] = resolve(self.config.reference_name, source=ref.source, precision="16-bit",
                                                engine=self.engine_for(REFERENCE), device=self.device,
                                                engine_args=ref.engine_args)
        return self._resolved[REFERENCE]  # type: ignore[return-value]

    def resolved(self) -> dict[str, ResolvedCheckpoint]:
        """The checkpoints resolved so far (nothing is fetched or produced here)."""
        return {n: c for n, c in self._resolved.items() if isinstance(c, ResolvedCheckpoint)}

    def get(self, name: str) -> ResolvedCheckpoint:
        if name == REFERENCE:
            return self.reference
        if name not in self._resolved:
            try:
                self._resolved[name] = self._resolve_candidate(name)
            except LongquantError as exc:
                self._resolved[name] = exc
        found = self._resolved[name]
        if isinstance(found, LongquantError):
            raise found
        return found

    def _resolve_candidate(self, name: str) -> ResolvedCheckpoint:
        c = self.config.candidate(name)
        g = self.config.gate
        calibration = CalibrationSpec(g.calibration.samples, g.calibration.tokens, tuple(g.calibration.languages),
                                      g.calibration.seed,
                                      str(self.config.resolve(g.calibration.file)) if g.calibration.file else None)
        # A relative local path is relative to the config file; anything else (a hub id) as written.
        source = c.source
        if source and self.config.resolve(source).exists():
            source = str(self.config.resolve(source))
        return resolve(name, source=source, recipe=c.recipe, reference=self.reference.path, precision=c.precision,
                       engine=self.engine_for(name), device=self.device, engine_args=c.engine_args,
                       calibration=calibration)
