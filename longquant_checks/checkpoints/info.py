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
