"""What a checkpoint's stream cost, measured in the run that produced its results (efficiency beside accuracy).

Throughput follows vLLM's own throughput benchmark: prompt tokens / wall seconds and output tokens / wall seconds of
the same stream (prefill and decode overlap under continuous batching, so neither has a wall time of its own).
Memory, KV-cache size and size on disk come from the engine and the checkpoint folder; each figure carries a note
saying what it measures, and `caveats` says where a figure does not mean what it seems.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

from .schema import Cell, bucket_label

EFFICIENCY_FORMAT = 1


def read_proc_status(pid: int | str = "self") -> dict[str, int]:
    """VmRSS / VmHWM (peak RSS) of a process in bytes, from /proc (empty where there is no /proc)."""
    out = {}
    try:
        with open(f"/proc/{pid}/status", encoding="utf-8") as fh:
            for line in fh:
                key, _, value = line.partition(":")
                if key in ("VmRSS", "VmHWM"):
                    out[key] = int(value.split()[0]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return out


def reset_peak_rss() -> None:
    """Restart this process's peak-RSS count from its current RSS (Linux: /proc/self/clear_refs, value 5), so an
    engine's peak is its own, not the high-water mark of a model loaded earlier in the same process."""
    try:
        with open("/proc/self/clear_refs", "w", encoding="utf-8") as fh:
            fh.write("5")
    except OSError:
        pass


def weights_on_disk(path: str | Path) -> int:
    """Bytes of a checkpoint folder's weight files (safetensors, and any other weight format it holds)."""
    folder = Path(path)
    if not folder.is_dir():
        return 0
    return sum(f.stat().st_size for f in folder.iterdir()
               if f.is_file() and f.suffix in (".safetensors", ".bin", ".pt", ".gguf"))


def stream_key(identity: dict[str, Any], engine: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps({"checkpoint": {k: v for k, v in identity.items() if k != "name"},
                                      "engine": engine}, sort_keys=True, default=str).encode()).hexdigest()


class StreamMeter:
    """Counts one stream's tokens and seconds per bucket; `record()` adds the engine's figures."""

    def __init__(self) -> None:
        self.t0 = time.perf_counter()
        self.buckets: dict[int, dict[str, float]] = defaultdict(lambda: {"samples": 0, "prompt_tokens": 0,
                                                                         "output_tokens": 0, "seconds": 0.0})

    def add(self, cell: Cell, n_prompt_tokens: int, n_output_tokens: int, seconds: float) -> None:
        b = self.buckets[cell.bucket]
        b["samples"] += 1
        b["prompt_tokens"] += n_prompt_tokens
        b["output_tokens"] += n_output_tokens
        b["seconds"] += seconds

    @property
    def samples(self) -> int:
        return int(sum(b["samples"] for b in self.buckets.values()))

    def record(self, *, checkpoint: str, key: str, identity: dict[str, Any], engine_identity: dict[str, Any],
               engine_version: str, resources: dict[str, Any], start_seconds: float | None, weights_path: str,
               in_flight: bool) -> dict[str, Any]:
        wall = time.perf_counter() - self.t0
        prompt = sum(b["prompt_tokens"] for b in self.buckets.values())
        output = sum(b["output_tokens"] for b in self.buckets.values())
        kind, device = engine_identity.get("kind", ""), str(engine_identity.get("device", ""))
        size = weights_on_disk(weights_path)
        caveats = list(resources.get("caveats", []))
        if kind == "hf" and not device.startswith("cuda") and identity.get("produced"):
            caveats.append("transformers on CPU decompresses compressed-tensors weights to 16-bit at load: its speed "
                           "and memory say nothing about int4/int8 kernels (use vLLM for those)")
        if in_flight:
            caveats.append("quantized in flight at load: the size on disk is the reference's files; the saving is in "
                           "memory only")
        if kind == "hf" and not device.startswith("cuda") and identity.get("recipe", "") in ("bnb-nf4", "bnb-int8"):
            caveats.append("bitsandbytes on CPU runs without its fast kernels: its speed is not representative")
        return {
            "format": EFFICIENCY_FORMAT, "checkpoint": checkpoint, "key": key,
            "fingerprint": identity.get("fingerprint"), "precision": identity.get("precision"),
            "recipe": identity.get("recipe") or (identity.get("produced") or {}).get("recipe"),
            "engine": {"kind": kind, "device": device, "version": engine_version,
                       "settings": engine_identity.get("settings", {})},
            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "engine_start_seconds": None if start_seconds is None else round(start_seconds, 2),
            "wall_seconds": round(wall, 3), "samples": self.samples, "prompt_tokens": int(prompt),
            "output_tokens": int(output),
            "prompt_tokens_per_second": round(prompt / wall, 2) if wall > 0 else None,
            "output_tokens_per_second": round(output / wall, 3) if wall > 0 else None,
            "buckets": {bucket_label(b): {"samples": int(v["samples"]), "prompt_tokens": int(v["prompt_tokens"]),
                                          "output_tokens": int(v["output_tokens"]),
                                          "seconds_per_sample": round(v["seconds"] / v["samples"], 4)}
                        for b, v in sorted(self.buckets.items())},
            "peak_memory_bytes": resources.get("peak_memory_bytes"),
            "memory_kind": resources.get("memory_kind"), "memory_note": resources.get("memory_note", ""),
            "kv_cache_bytes_per_token": resources.get("kv_cache_bytes_per_token"),
            "kv_cache_note": resources.get("kv_cache_note", ""),
            "engine_reported": resources.get("engine_reported", {}),
            "weights_memory_bytes": resources.get("weights_memory_bytes") or (None if in_flight else size or None),
            "size_on_disk_bytes": size or None, "caveats": caveats,
        }
