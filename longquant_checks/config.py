"""The config stage: `longquant.toml` or `[tool.longquant]` in pyproject.toml, validated with pydantic.

TOML only (no code execution). Every error names the key, the bad value and what is accepted.
Relative paths (baseline_dir, results_dir, local checkpoints, corpora) are relative to the config file.
"""

from __future__ import annotations

import re
import tomllib
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from .errors import LongquantError
from .gate import MODES, ToleranceRule
from .plan import NOT_GATED_REASONS, resolve_buckets, resolve_languages, resolve_tasks
from .schema import PRECISIONS

ENGINES = ("hf", "vllm", "openai")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.]*$")  # no "-": test ids read candidate-task-bucket-lang


class ConfigError(LongquantError, ValueError):
    """The config file is missing, not TOML, or has a bad key or value."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class CandidateConfig(_Strict):
    """A candidate: a ready checkpoint (`source`: path or hub id) or a `recipe` applied to the reference."""

    name: str
    source: str | None = None
    recipe: str | None = None
    precision: Literal["16-bit", "8-bit", "4-bit"] | None = None
    engine: Literal["hf", "vllm", "openai"] | None = None  # default: the config's engine
    engine_args: dict[str, Any] = Field(default_factory=dict)  # on top of the shared engine_args
    trust_remote_code: bool = False

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        if not _NAME.match(v) or v == "reference":
            raise ValueError("use letters, digits, '_' and '.' (no '-': test ids are candidate-task-bucket-lang); "
                             "'reference' is reserved")
        return v

    @field_validator("recipe")
    @classmethod
    def _recipe(cls, v: str | None) -> str | None:
        from .checkpoints.recipes import RECIPES

        if v is not None and v not in RECIPES:
            raise ValueError(f"unknown recipe; accepted: {', '.join(RECIPES)}")
        return v

    @model_validator(mode="after")
    def _one_source(self) -> "CandidateConfig":
        if (self.source is None) == (self.recipe is None):
            raise ValueError("give exactly one of `source` (a path or hub id) or `recipe`")
        return self


class ReferenceConfig(_Strict):
    source: str
    name: str | None = None  # names its baselines/<name>/ folder; default: the source's last path part
    engine_args: dict[str, Any] = Field(default_factory=dict)
    trust_remote_code: bool = False


class RuleConfig(_Strict):
    points: float | None = Field(default=None, ge=0)
    relative: float | None = Field(default=None, ge=0, le=100)
    precision: Literal["16-bit", "8-bit", "4-bit"] | None = None
    task: str | None = None
    bucket: str | int | None = None
    language: str | None = None

    @model_validator(mode="after")
    def _one_amount(self) -> "RuleConfig":
        if (self.points is None) == (self.relative is None):
            raise ValueError("give exactly one of `points` (absolute drop) or `relative` (% of the reference mean)")
        return self


class ToleranceConfig(_Strict):
    cell: dict[Literal["16-bit", "8-bit", "4-bit"], float] = Field(default_factory=dict)
    language: dict[Literal["16-bit", "8-bit", "4-bit"], float] = Field(default_factory=dict)  # a language's average
    bucket: dict[Literal["16-bit", "8-bit", "4-bit"], float] = Field(default_factory=dict)  # a bucket's average
    aggregate: dict[Literal["16-bit", "8-bit", "4-bit"], float] = Field(default_factory=dict)
    rules: list[RuleConfig] = Field(default_factory=list)


class CalibrationConfig(_Strict):
    samples: int = Field(default=32, ge=1)
    tokens: int = Field(default=512, ge=16)
    languages: list[str] = Field(default_factory=lambda: ["en"])
    seed: int = 0
    file: str | None = None  # your own calibration text (JSONL of {"text": ...} or .txt), relative to the config


_Precisions = dict[Literal["16-bit", "8-bit", "4-bit"], float]


class DivergenceConfig(_Strict):
    """The divergence signal (docs/divergence.md): beside the accuracy verdicts, never instead of them. Tolerances
    are allowances over the measured noise floor (`longquant noise-floor`), per precision class and level, in the
    signal's units; what is not given keeps divergence_gate's defaults."""

    enabled: bool = False
    signal: Literal["kl", "nll", "top1"] = "kl"
    top_k: int = Field(default=20, ge=1, le=100)
    trend: bool = True  # per task: the divergence and the accuracy drop must not grow with length (>= 2 buckets)
    cell: _Precisions = Field(default_factory=dict)
    language: _Precisions = Field(default_factory=dict)
    bucket: _Precisions = Field(default_factory=dict)
    aggregate: _Precisions = Field(default_factory=dict)
    trend_slope: _Precisions = Field(default_factory=dict)  # allowed growth of the divergence per doubling
    accuracy_trend_slope: _Precisions = Field(default_factory=dict)  # allowed growth of the accuracy drop, points


class SystemPromptText(_Strict):
    text: str = Field(min_length=1)


class GateConfig(_Strict):
    reference: ReferenceConfig
    candidates: list[CandidateConfig] = Field(default_factory=list)
    engine: Literal["hf", "vllm", "openai"] = "hf"
    device: Literal["cpu", "cuda", "auto"] = "auto"
    engine_args: dict[str, Any] = Field(default_factory=dict)  # shared by reference and candidates
    tasks: list[str] | Literal["all"] = Field(default_factory=lambda: ["niah_single_1"])
    buckets: list[str | int] | Literal["all"] = Field(default_factory=lambda: [4096])
    languages: list[str] | Literal["all"] = Field(default_factory=lambda: ["en"])
    samples: int = Field(default=50, ge=1, le=100_000)
    seed: int = 0
    mode: Literal["default", "strict", "point"] = "default"
    alpha: float = Field(default=0.05, gt=0, lt=0.5)
    tolerance: ToleranceConfig = Field(default_factory=ToleranceConfig)
    divergence: DivergenceConfig = Field(default_factory=DivergenceConfig)
    rerun_reference: bool = False  # also gate a fresh reference run against its stored baseline
    baseline_dir: str = "baselines"
    results_dir: str = ".longquant/results"
    calibration: CalibrationConfig = Field(default_factory=CalibrationConfig)
    corpora: dict[str, str] = Field(default_factory=dict)  # language -> folder of .txt haystack
    qa_file: str | None = None
    # The studies: one user turn, no system prompt; "model-default" keeps the chat template's own; {text = "..."}.
    system_prompt: Literal["none", "model-default"] | SystemPromptText = "none"
    answer_prefix: bool = True  # start the answer with its first words (RULER, lm-eval), where the template allows
    # Reasons for which a planned case that cannot run here is allowed (skipped) instead of failing the session.
    allow_not_gated: list[Literal[tuple(NOT_GATED_REASONS)]] = Field(default_factory=list)  # type: ignore[valid-type]

    @field_validator("reference", mode="before")
    @classmethod
    def _reference(cls, v: Any) -> Any:
        return {"source": v} if isinstance(v, str) else v

    @field_validator("tasks")
    @classmethod
    def _tasks(cls, v: Any) -> Any:
        return resolve_tasks(None if v == "all" else v)

    @field_validator("buckets")
    @classmethod
    def _buckets(cls, v: Any) -> Any:
        return resolve_buckets(None if v == "all" else v)

    @field_validator("languages")
    @classmethod
    def _languages(cls, v: Any) -> Any:
        return resolve_languages(None if v == "all" else v)

    @model_validator(mode="after")
    def _unique_names(self) -> "GateConfig":
        names = [c.name for c in self.candidates]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"candidate names must be unique; repeated: {', '.join(dupes)}")
        return self

    @model_validator(mode="after")
    def _rules_in_plan(self) -> "GateConfig":
        """A rule for a task, bucket or language the plan does not hold would never apply: a typo, said now."""
        from .schema import bucket_label, parse_bucket

        for i, rule in enumerate(self.tolerance.rules):
            where = f"tolerance.rules[{i}]"
            if rule.task is not None and rule.task not in self.tasks:
                raise ValueError(f"{where}: task {rule.task!r} is not in the plan's tasks ({', '.join(self.tasks)})")
            if rule.language is not None and rule.language not in self.languages:
                raise ValueError(f"{where}: language {rule.language!r} is not in the plan's languages "
                                 f"({', '.join(self.languages)})")
            if rule.bucket is not None:
                try:
                    bucket = parse_bucket(rule.bucket)
                except LongquantError as exc:
                    raise ValueError(f"{where}: {exc}") from None
                if bucket not in self.buckets:
                    raise ValueError(f"{where}: bucket {rule.bucket!r} is not in the plan's buckets "
                                     f"({', '.join(bucket_label(b) for b in self.buckets)})")
        return self


class Config:
    """A validated config plus where it came from (relative paths resolve against its folder)."""

    def __init__(self, gate: GateConfig, path: Path | None):
        self.gate = gate
        self.path = path
        self.root = path.parent if path else Path.cwd()

    def resolve(self, value: str) -> Path:
        p = Path(value).expanduser()
        return p if p.is_absolute() else (self.root / p).resolve()  # messages show /x/baselines, not /x/fixtures/../baselines

    @property
    def baseline_dir(self) -> Path:
        return self.resolve(self.gate.baseline_dir)

    @property
    def results_dir(self) -> Path:
        return self.resolve(self.gate.results_dir)

    @property
    def reference_name(self) -> str:
        ref = self.gate.reference
        if ref.name:
            return ref.name
        if ref.source in ("demo", "smollm2-135m-instruct"):
            return "SmolLM2-135M-Instruct"
        return Path(ref.source.rstrip("/")).name or ref.source

    def tolerance_rules(self) -> list[ToleranceRule]:
        from .schema import parse_bucket

        return [ToleranceRule(points=r.points, relative=r.relative, precision=r.precision, task=r.task,
                              bucket=parse_bucket(r.bucket) if r.bucket is not None else None, language=r.language)
                for r in self.gate.tolerance.rules]

    def candidate(self, name: str) -> CandidateConfig:
        for c in self.gate.candidates:
            if c.name == name:
                return c
        raise ConfigError(f"no candidate named {name!r}; candidates: {', '.join(c.name for c in self.gate.candidates)}")


def _describe(error: dict[str, Any], data: dict[str, Any]) -> str:
    loc = ".".join(str(p) for p in error["loc"])
    # Name candidates by their name, not their list index, when we can.
    parts = list(error["loc"])
    if len(parts) >= 2 and parts[0] == "candidates" and isinstance(parts[1], int):
        try:
            loc = f"candidates[{data['candidates'][parts[1]].get('name', parts[1])!r}]" + "".join(
                f".{p}" for p in parts[2:])
        except (KeyError, IndexError, AttributeError, TypeError):
            pass
    message = error["msg"].removeprefix("Value error, ")
    if error["type"] == "extra_forbidden":
        message = "unknown key (check its spelling; see docs/config.md for the keys)"
    value = error.get("input")
    shown = "" if error["type"] in ("missing",) or isinstance(value, dict) else f" (got {value!r})"
    return f"  {loc}: {message}{shown}" if loc else f"  {message}"


def parse_config(data: dict[str, Any], path: Path | None = None) -> Config:
    """Validate a config dict; `preset = "<name>"` starts from a bundled preset (docs/presets.md)."""
    where = str(path) if path else "config"
    if "preset" in data:
        from .presets import load_preset, merge_preset

        user = dict(data)
        try:
            data = merge_preset(load_preset(str(user.pop("preset"))), user)
        except LongquantError as exc:
            raise ConfigError(f"{where}: preset: {exc}") from None
    try:
        return Config(GateConfig.model_validate(data), path)
    except ValidationError as exc:
        lines = [_describe(e, data) for e in exc.errors()]
        raise ConfigError(f"{where}: {len(lines)} problem(s):\n" + "\n".join(lines)) from None
    except LongquantError as exc:  # unknown task / language / bucket from the resolvers
        raise ConfigError(f"{where}: {exc}") from None


def load_config(path: str | Path) -> Config:
    """Read a `longquant.toml` (top-level keys) or a pyproject.toml (`[tool.longquant]`)."""
    file = Path(path)
    if not file.is_file():
        raise ConfigError(f"config file {file} does not exist; pass --lq-config PATH or create longquant.toml")
    try:
        data = tomllib.loads(file.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{file} is not valid TOML: {exc}") from None
    if file.name == "pyproject.toml":
        data = data.get("tool", {}).get("longquant")
        if data is None:
            raise ConfigError(f"{file} has no [tool.longquant] table")
    return parse_config(data, file.resolve())


def find_config(start: Path) -> Path | None:
    """longquant.toml, else a pyproject.toml with [tool.longquant], in `start`."""
    if (start / "longquant.toml").is_file():
        return start / "longquant.toml"
    pyproject = start / "pyproject.toml"
    if pyproject.is_file():
        try:
            if "longquant" in tomllib.loads(pyproject.read_text(encoding="utf-8")).get("tool", {}):
                return pyproject
        except tomllib.TOMLDecodeError:
            return None
    return None


__all__ = ["ENGINES", "MODES", "PRECISIONS", "CandidateConfig", "Config", "ConfigError", "GateConfig",
           "find_config", "load_config", "parse_config"]


def prompt_style(gate: GateConfig):
    """The config's prompt framing, for the tokenizer that builds every sample."""
    from .text.tokens import MODEL_DEFAULT, PromptStyle

    system = gate.system_prompt
    text = None if system == "none" else MODEL_DEFAULT if system == "model-default" else system.text
    return PromptStyle(system_prompt=text, answer_prefix=gate.answer_prefix)

