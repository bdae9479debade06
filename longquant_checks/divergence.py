"""Token-level divergence from the reference (the second signal beside accuracy): the reference's side of each
sample (its greedy answer's tokens and top-k log-probabilities, stored with its baseline) against the candidate's
side (the same answer teacher-forced through the candidate on the same token prompt). Pure numpy: engines hand
over log-probabilities, the gate reads `SampleDivergence`.

Per sample, averaged over the reference answer's tokens a_t (its stop token included, so the decision to stop
counts), all in nats per token:
- ``nll``: the candidate's negative log-likelihood of a_t minus the reference's own (0 = as confident; > 0 = the
  candidate finds the reference's answer less likely);
- ``top1``: the share of positions where the candidate's argmax is a_t (llama.cpp's "same top p");
- ``kl``: KL(reference || candidate) per position over the reference's top-k tokens and the rest of the vocabulary
  lumped into one outcome. Coarse-graining can only lower a KL (log-sum inequality), so with the candidate's full
  distribution (transformers) it is a lower bound of the full-vocabulary KL, exact up to the reference's tail mass
  outside its top k (`bias` in tests/test_divergence.py measures both). Where the candidate gives its own top-k
  only (vLLM's prompt_logprobs), a reference top-k token outside the candidate's top-k gets the candidate's k-th
  probability, an upper bound of its own: that term is underestimated, the lumped rest overestimated
  (`kl_method` = "topk").
"""

from __future__ import annotations

import base64
import math
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import numpy as np

from .errors import LongquantError

DEFAULT_TOP_K = 20  # what vLLM's prompt_logprobs returns cheaply; >99% of the mass of a confident answer token
_LOG_FLOOR = -60.0  # log-probabilities below this count as this (float32 underflow would make a KL infinite)
SIGNALS = ("kl", "nll", "top1")


class DivergenceError(LongquantError, ValueError):
    """A stored reference trace or an engine's scores cannot be read or do not fit together."""


def _pack(array: np.ndarray, dtype: str) -> str:
    return base64.b64encode(np.ascontiguousarray(array, dtype=dtype).tobytes()).decode("ascii")


def _unpack(text: str, dtype: str, shape: tuple[int, ...], what: str) -> np.ndarray:
    try:
        raw = base64.b64decode(text.encode("ascii"), validate=True)
        return np.frombuffer(raw, dtype=dtype).reshape(shape).copy()
    except (ValueError, TypeError) as exc:
        raise DivergenceError(f"{what}: not a packed {dtype} array of shape {shape} ({exc})") from None


@dataclass
class TokenTrace:
    """The reference's side of one sample: its answer's token ids (T), its log-probability of each (T), and its
    top-k token ids and log-probabilities at each position (T x k, most likely first)."""

    ids: np.ndarray
    logprobs: np.ndarray
    top_ids: np.ndarray
    top_logprobs: np.ndarray

    def __post_init__(self) -> None:
        self.ids = np.asarray(self.ids, dtype=np.int64).reshape(-1)
        self.logprobs = np.asarray(self.logprobs, dtype=np.float32).reshape(-1)
        self.top_ids = np.asarray(self.top_ids, dtype=np.int64).reshape(len(self.ids), -1)
        self.top_logprobs = np.asarray(self.top_logprobs, dtype=np.float32).reshape(self.top_ids.shape)
        if self.logprobs.shape != self.ids.shape:
            raise DivergenceError(f"a trace has {len(self.ids)} token ids but {len(self.logprobs)} log-probabilities")

    @property
    def k(self) -> int:
        return int(self.top_ids.shape[1])

    def __len__(self) -> int:
        return len(self.ids)

    def prefix(self, n: int) -> "TokenTrace":
        """The first n answer tokens' trace."""
        return TokenTrace(self.ids[:n], self.logprobs[:n], self.top_ids[:n], self.top_logprobs[:n])

    def to_json(self) -> dict[str, Any]:
        """Compact: ids as little-endian int32, log-probabilities as float16 (3 significant digits; the gate's
        tolerances are orders of magnitude above that rounding), base64: ~170 bytes a token at k = 20."""
        return {"n": len(self), "k": self.k, "ids": _pack(self.ids, "<i4"), "logprobs": _pack(self.logprobs, "<f2"),
                "top_ids": _pack(self.top_ids, "<i4"), "top_logprobs": _pack(self.top_logprobs, "<f2")}

    @classmethod
    def from_json(cls, data: Mapping[str, Any], what: str = "trace") -> "TokenTrace":
        try:
            n, k = int(data["n"]), int(data["k"])
            if n < 0 or k < 1:
                raise ValueError(f"n={n}, k={k}")
            return cls(_unpack(data["ids"], "<i4", (n,), what), _unpack(data["logprobs"], "<f2", (n,), what),
                       _unpack(data["top_ids"], "<i4", (n, k), what), _unpack(data["top_logprobs"], "<f2", (n, k), what))
        except (KeyError, TypeError, ValueError) as exc:
            if isinstance(exc, DivergenceError):
                raise
            raise DivergenceError(f"{what}: not a token trace ({type(exc).__name__}: {exc}); re-make the baseline "
                                  "with --lq-update-baselines=all") from None


@dataclass
class ForcedScores:
    """The candidate's side of one sample: the reference's answer teacher-forced through it. Per position t: its
    log-probability of the reference's token (T), its argmax (T), and its log-probabilities of the reference's
    top-k tokens (T x k); `exact`: those are all known (False: some were bounded, see the module docstring)."""

    token_logprobs: np.ndarray
    argmax_ids: np.ndarray
    ref_top_logprobs: np.ndarray
    exact: bool = True


def trace_from_logprobs(ids: Sequence[int], logprobs: np.ndarray, k: int = DEFAULT_TOP_K) -> TokenTrace:
    """The trace of an answer from the full log-probability rows (T x vocabulary) that produced its tokens."""
    logprobs = np.asarray(logprobs, dtype=np.float32)
    ids = np.asarray(ids, dtype=np.int64)
    if logprobs.ndim != 2 or logprobs.shape[0] != len(ids):
        raise DivergenceError(f"{len(ids)} answer tokens need {len(ids)} rows of log-probabilities, got "
                              f"{logprobs.shape}")
    k = min(k, logprobs.shape[1])
    top = np.argsort(-logprobs, axis=1, kind="stable")[:, :k]
    return TokenTrace(ids, logprobs[np.arange(len(ids)), ids], top, np.take_along_axis(logprobs, top, axis=1))


def forced_from_logprobs(trace: TokenTrace, logprobs: np.ndarray) -> ForcedScores:
    """The candidate's side from its full log-probability rows at the answer's positions (exact)."""
    logprobs = np.asarray(logprobs, dtype=np.float32)
    if logprobs.ndim != 2 or logprobs.shape[0] != len(trace):
        raise DivergenceError(f"the reference's answer has {len(trace)} tokens; the candidate scored "
                              f"{logprobs.shape[0] if logprobs.ndim == 2 else logprobs.shape} positions")
    rows = np.arange(len(trace))
    return ForcedScores(logprobs[rows, trace.ids], logprobs.argmax(axis=1),
                        np.take_along_axis(logprobs, trace.top_ids, axis=1), exact=True)


def forced_from_topk(trace: TokenTrace, positions: Sequence[Mapping[int, float]]) -> ForcedScores:
    """The candidate's side from its top-k log-probabilities per answer position, each a {token id: logprob} that
    also holds the reference's token (vLLM's prompt_logprobs). Unknown reference top-k tokens get the smallest
    known log-probability of that position (an upper bound of theirs). Fewer positions than the answer has (at least
    one): the answer's first ones were scored (an engine that needs room for a generated token beyond
    max_model_len drops the last), and `measure` compares that prefix."""
    if not 1 <= len(positions) <= len(trace):
        raise DivergenceError(f"the reference's answer has {len(trace)} tokens; the candidate scored "
                              f"{len(positions)} positions")
    trace = trace.prefix(len(positions))
    token_lp = np.empty(len(trace), np.float32)
    argmax = np.empty(len(trace), np.int64)
    ref_top = np.empty(trace.top_ids.shape, np.float32)
    exact = True
    for t, known in enumerate(positions):
        a = int(trace.ids[t])
        if a not in known:
            raise DivergenceError(f"position {t}: the candidate's log-probabilities lack the reference's token {a}")
        token_lp[t] = known[a]
        argmax[t] = max(known, key=lambda tok: (known[tok], -tok))
        floor = min(known.values())
        for j, tok in enumerate(trace.top_ids[t]):
            value = known.get(int(tok))
            if value is None:
                exact = False
                value = floor
            ref_top[t, j] = value
    return ForcedScores(token_lp, argmax, ref_top, exact)


@dataclass
class SampleDivergence:
    """One sample's divergence (module docstring), in nats per answer token; `tokens`: the answer's length."""

    kl: float
    nll: float
    top1: float
    tokens: int
    kl_method: str = "exact"  # "exact" (the candidate's full distribution) or "topk" (bounded, see the docstring)

    def value(self, signal: str) -> float:
        """The gated quantity of a signal, oriented so that larger is worse: kl, nll, 1 - top1."""
        if signal == "top1":
            return 1.0 - self.top1
        if signal in ("kl", "nll"):
            return getattr(self, signal)
        raise DivergenceError(f"unknown divergence signal {signal!r}; choose one of {', '.join(SIGNALS)}")

    def to_json(self) -> dict[str, Any]:
        return {"kl": self.kl, "nll": self.nll, "top1": self.top1, "tokens": self.tokens, "kl_method": self.kl_method}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> "SampleDivergence":
        return cls(float(data["kl"]), float(data["nll"]), float(data["top1"]), int(data["tokens"]),
                   str(data.get("kl_method", "exact")))


def partition_kl(p_top: np.ndarray, q_top: np.ndarray) -> np.ndarray:
    """Per row: KL(p || q) over the row's listed outcomes plus the rest lumped into one (log-probabilities in)."""
    p_top = np.maximum(np.asarray(p_top, np.float64), _LOG_FLOOR)
    q_top = np.maximum(np.asarray(q_top, np.float64), _LOG_FLOOR)
    p, q = np.exp(p_top), np.exp(q_top)
    listed = np.sum(p * (p_top - q_top), axis=1)
    p_rest = np.clip(1.0 - p.sum(axis=1), 0.0, 1.0)
    q_rest = np.clip(1.0 - q.sum(axis=1), math.exp(_LOG_FLOOR), 1.0)
    rest = np.where(p_rest > 0, p_rest * (np.log(np.maximum(p_rest, 1e-300)) - np.log(q_rest)), 0.0)
    return np.maximum(listed + rest, 0.0)  # >= 0 up to rounding of the stored log-probabilities


def measure(trace: TokenTrace, forced: ForcedScores) -> SampleDivergence:
    """One sample's divergence of the candidate from the reference."""
    if len(trace) == 0:
        return SampleDivergence(0.0, 0.0, 1.0, 0, "exact" if forced.exact else "topk")
    if 1 <= len(forced.token_logprobs) < len(trace):  # a prefix scored (forced_from_topk)
        trace = trace.prefix(len(forced.token_logprobs))
    if len(forced.token_logprobs) != len(trace):
        raise DivergenceError(f"the reference's answer has {len(trace)} tokens, the candidate's scores "
                              f"{len(forced.token_logprobs)}")
    kl = partition_kl(trace.top_logprobs, forced.ref_top_logprobs)
    nll = np.maximum(trace.logprobs.astype(np.float64), _LOG_FLOOR) - \
        np.maximum(forced.token_logprobs.astype(np.float64), _LOG_FLOOR)
    top1 = forced.argmax_ids == trace.ids
    return SampleDivergence(float(kl.mean()), float(nll.mean()), float(top1.mean()), len(trace),
                            "exact" if forced.exact else "topk")
