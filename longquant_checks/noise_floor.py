"""The divergence signal's noise floor and tolerances: what the reference's own numerics put between its stored
traces and itself (another batch shape: its traces come from batched generation, the candidate side from one
unpadded forward pass per sample), stored as `noise_floor.json` beside the baselines of its engine setup
(`longquant noise-floor` measures it), and the tolerances built on it: per precision class and level, the
allowance (config `[divergence]`, else `DEFAULT_ALLOWANCE`) plus the floor's upper bound.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from .errors import LongquantError
from .gate import Tolerance
from .storage import write_text_atomic

FLOOR_FILE = "noise_floor.json"
FLOOR_SCHEMA = 1

# Allowed divergence over the floor, per signal, level and precision class. KL and NLL in nats per answer token,
# top1 as the share of answer positions whose argmax differs. Set from the demo (docs/divergence.md: SmolLM2-135M,
# niah_single_2/3, 1K-2K, en/es/ru, CPU float32): GPTQ int8 0.001-0.006 KL per cell, LLM.int8 0.007-0.026, NF4
# 0.06-0.39; the floor (the reference against itself) ~1e-9. A cell swings more than an average, so it gets the most.
# For scale, llama.cpp measures free text on Llama-3-8B at mean KL 0.0014 for q8_0 and 0.031 for q4_K_M: a large
# model's confident answer tokens diverge less than a 135M model's, so tighten these per model (config
# `[divergence]`) once its own 8-bit figures are known. 16-bit (bf16 vs fp16, another engine) gets 1e-4 nats, 4x
# llama.cpp's bf16-vs-fp16 floor of 0.000025, and one position in a hundred for top1.
_KL = {"cell": {"16-bit": 1e-4, "8-bit": 0.04, "4-bit": 0.10},
       "language": {"16-bit": 1e-4, "8-bit": 0.03, "4-bit": 0.08},
       "bucket": {"16-bit": 1e-4, "8-bit": 0.03, "4-bit": 0.08},
       "aggregate": {"16-bit": 1e-4, "8-bit": 0.02, "4-bit": 0.06}}
_TOP1 = {"cell": {"16-bit": 0.01, "8-bit": 0.10, "4-bit": 0.20},
         "language": {"16-bit": 0.01, "8-bit": 0.08, "4-bit": 0.15},
         "bucket": {"16-bit": 0.01, "8-bit": 0.08, "4-bit": 0.15},
         "aggregate": {"16-bit": 0.01, "8-bit": 0.06, "4-bit": 0.12}}
# The floor enters at twice its upper bound: another run of the reference against itself scatters around the floor's
# mean and can land above the floor's own 97.5% bound; the margin (with the 16-bit allowance) keeps such an A/A run
# passing (tests/test_engine_hf.py: A/A runs at other batch sizes).
FLOOR_MARGIN = 2.0
DEFAULT_ALLOWANCE: dict[str, dict[str, dict[str, float]]] = {"kl": _KL, "nll": _KL, "top1": _TOP1}
# Growth per doubling of the input: of the divergence (its units), of the accuracy drop (points).
DEFAULT_TREND: dict[str, float] = {"16-bit": 0.0, "8-bit": 0.02, "4-bit": 0.05}
DEFAULT_ACCURACY_TREND: dict[str, float] = {"16-bit": 5.0, "8-bit": 10.0, "4-bit": 15.0}


class NoiseFloorError(LongquantError):
    """A noise-floor file cannot be read."""


@dataclass
class NoiseFloor:
    """Per signal: the mean divergence of the reference from its own traces, over the cells measured, and the
    upper end of its 95% bootstrap interval; per cell the same."""

    signals: dict[str, dict[str, Any]]
    cells: int
    samples: int
    how: str = ""
    date: str = ""
    reference_fingerprint: str = ""
    schema: int = FLOOR_SCHEMA

    def upper(self, signal: str) -> float:
        return float(self.signals.get(signal, {}).get("upper", 0.0))

    @classmethod
    def measure(cls, per_cell: Mapping[str, Mapping[str, Sequence[float]]], how: str, fingerprint: str,
                seed: int = 0) -> "NoiseFloor":
        """`per_cell`: cell id -> signal -> per-sample values."""
        rng = np.random.default_rng(seed)
        signals: dict[str, dict[str, Any]] = {}
        names = sorted({sig for cell in per_cell.values() for sig in cell})
        for sig in names:
            arrays = [np.asarray(v[sig], float) for v in per_cell.values() if sig in v and len(v[sig])]
            means = np.zeros(2000)
            for a in arrays:
                means += a[rng.integers(0, a.size, size=(2000, a.size))].mean(axis=1)
            means /= max(len(arrays), 1)
            signals[sig] = {"mean": float(np.mean([a.mean() for a in arrays])), "upper": float(np.quantile(means, 0.975)),
                            "max": float(max(a.max() for a in arrays)),
                            "cells": {cid: {"mean": float(np.mean(v[sig])), "n": len(v[sig])}
                                      for cid, v in per_cell.items() if sig in v}}
        return cls(signals, len(per_cell), sum(len(next(iter(v.values()), [])) for v in per_cell.values()), how,
                   time.strftime("%Y-%m-%d", time.gmtime()), fingerprint)

    def save(self, folder: Path) -> Path:
        path = Path(folder) / FLOOR_FILE
        path.parent.mkdir(parents=True, exist_ok=True)
        write_text_atomic(path, json.dumps(self.__dict__, indent=1, sort_keys=True) + "\n")
        return path

    @classmethod
    def load(cls, folder: Path) -> "NoiseFloor | None":
        path = Path(folder) / FLOOR_FILE
        if not path.exists():
            return None
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
            floor = cls(**data)
        except (ValueError, TypeError, OSError) as exc:
            raise NoiseFloorError(f"{path}: not a noise floor ({exc}); measure it again with `longquant noise-floor` "
                                  "or delete it") from None
        if floor.schema != FLOOR_SCHEMA:
            raise NoiseFloorError(f"{path}: noise floor schema {floor.schema}, this version reads {FLOOR_SCHEMA}; "
                                  "measure it again with `longquant noise-floor`")
        return floor


@dataclass
class DivergenceTolerances:
    by_level: dict[str, Tolerance]
    trend: Tolerance
    accuracy_trend: Tolerance
    notes: list[str] = field(default_factory=list)

    @classmethod
    def build(cls, precision: str, config: Any, floor: NoiseFloor | None) -> "DivergenceTolerances":
        """`config`: config.DivergenceConfig (its per-level allowances override the defaults)."""
        signal = config.signal
        base = FLOOR_MARGIN * floor.upper(signal) if floor else 0.0
        where = (f"noise floor {FLOOR_MARGIN:g} x {floor.upper(signal):.3g} (its upper 95% bound, measured "
                 f"{floor.date})" if floor else
                 "no noise floor measured (`longquant noise-floor` stores one beside the baselines)")
        by_level = {}
        for level in ("cell", "language", "bucket", "aggregate"):
            given = getattr(config, level)
            allowance = float(given.get(precision, DEFAULT_ALLOWANCE[signal][level][precision]))
            origin = "config" if precision in given else "default"
            by_level[level] = Tolerance(base + allowance, f"{origin} {precision} allowance {allowance:g} over the "
                                                          f"{where}")
        slope = float(config.trend_slope.get(precision, DEFAULT_TREND[precision]))
        acc = float(config.accuracy_trend_slope.get(precision, DEFAULT_ACCURACY_TREND[precision]))
        return cls(by_level, Tolerance(slope, f"{precision} allowance {slope:g} per doubling of length"),
                   Tolerance(acc, f"{precision} allowance {acc:g} points per doubling of length"))
