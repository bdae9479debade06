"""Facts read from a checkpoint folder without loading its weights."""

from __future__ import annotations

import json
from pathlib import Path


def max_context_length(source: str | Path) -> int | None:
    """max_position_embeddings (or a similar key) from a local checkpoint's config.json, if present."""
    config = Path(source) / "config.json"
    if not config.is_file():
        return None
    data = json.loads(config.read_text(encoding="utf-8"))
    data = data.get("text_config", data)
    for key in ("max_position_embeddings", "max_sequence_length", "seq_length", "n_positions"):
        if isinstance(data.get(key), int):
            return data[key]
    return None


def _rope(data: dict) -> dict:
    rope = data.get("rope_parameters") or data.get("rope_scaling") or {}
    return rope if isinstance(rope, dict) else {}


def context_length(source: str | Path, overrides: dict | None = None) -> int | None:
    """The positions the model covers once `overrides` (vLLM's hf_overrides, the same on every checkpoint of a
    gate) are applied: an overridden max_position_embeddings, else the config's, times a YaRN / linear / dynamic
    RoPE factor when the override brings one (None: not a local checkpoint)."""
    base = max_context_length(source)
    overrides = overrides or {}
    if isinstance(overrides.get("max_position_embeddings"), int):
        return overrides["max_position_embeddings"]
    rope = _rope(overrides)
    if base is not None and rope.get("factor") and rope.get("rope_type", rope.get("type")) != "default":
        original = rope.get("original_max_position_embeddings") or base
        return int(original * float(rope["factor"]))
    return base


def yarn_overrides(source: str | Path, target: int) -> dict | None:
    """The hf_overrides that stretch the model to `target` positions with YaRN, as the source study ran Qwen2.5 past
    32K: the config's own RoPE theta kept, factor = target / original length (None: no local config)."""
    config = Path(source) / "config.json"
    base = max_context_length(source)
    if base is None or not config.is_file():
        return None
    data = json.loads(config.read_text(encoding="utf-8"))
    data = data.get("text_config", data)
    theta = _rope(data).get("rope_theta", data.get("rope_theta"))
    factor = target / base
    rope = {"rope_type": "yarn", "factor": float(factor), "original_max_position_embeddings": base}
    if theta is not None:
        rope["rope_theta"] = theta
    # max_position_embeddings too: newer vLLM takes a YaRN model's max_position_embeddings as already scaled.
    return {"rope_parameters": rope, "max_position_embeddings": target}


def parameter_count(source: str | Path) -> int | None:
    """Parameters stored in a local checkpoint's safetensors files, read from their headers (no weights loaded);
    None where there are none. Packed quantized tensors count as stored, not as the parameters they stand for."""
    import struct

    files = sorted(Path(source).glob("*.safetensors")) if Path(source).is_dir() else []
    total = 0
    for path in files:
        try:
            with open(path, "rb") as fh:
                size = struct.unpack("<Q", fh.read(8))[0]
                header = json.loads(fh.read(size))
        except (OSError, ValueError, struct.error):
            return None
        for name, meta in header.items():
            if name != "__metadata__" and isinstance(meta, dict):
                count = 1
                for dim in meta.get("shape", []):
                    count *= int(dim)
                total += count
    return total or None
