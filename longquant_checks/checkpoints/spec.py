"""Checkpoint specs, fingerprints and precision classes (HELM-style: a spec is plain, serializable data).

A candidate is a checkpoint (a ready path / hub id, or a recipe applied to the reference) plus the
engine settings it is served with. Its fingerprint hashes config, tokenizer files and the full bytes of
every weight file: a re-quantized checkpoint with the same shapes is another checkpoint. Weight digests are
cached by file identity (digest.py), so a 100 GB checkpoint is read once, not on every run.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ..errors import LongquantError
from ..schema import PRECISIONS
from .digest import file_digest

_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "chat_template.jinja",
                    "tokenizer.model", "vocab.json", "merges.txt")
_PICKLE_WEIGHTS = ("*.bin", "*.pt", "*.pth", "*.ckpt", "*.pkl")


class CheckpointError(LongquantError, ValueError):
    """A checkpoint is missing, unsafe or not understood."""


@dataclass(frozen=True)
class CheckpointSpec:
    """What a user writes: `source` (a ready checkpoint) or `recipe` applied to `reference`."""

    name: str
    source: str | None = None
    reference: str | None = None
    recipe: str | None = None
    precision: str | None = None  # inferred from the checkpoint's quantization_config when None
    engine_args: dict[str, Any] = field(default_factory=dict)
    trust_remote_code: bool = False

    def __post_init__(self) -> None:
        if (self.source is None) == (self.recipe is None):
            raise CheckpointError(f"checkpoint {self.name!r}: give exactly one of `source` (a path or hub id) "
                                  "or `recipe` (with `reference`)")
        if self.recipe is not None and not self.reference:
            raise CheckpointError(f"checkpoint {self.name!r}: recipe {self.recipe!r} needs a `reference` to apply to")
        if self.precision is not None and self.precision not in PRECISIONS:
            raise CheckpointError(f"checkpoint {self.name!r}: precision {self.precision!r} is not one of "
                                  f"{', '.join(PRECISIONS)}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def check_safe_weights(path: Path) -> list[Path]:
    """The checkpoint's safetensors files; pickled weights alone are refused (they can execute code)."""
    tensors = sorted(path.glob("*.safetensors"))
    if not tensors:
        pickled = sorted(p.name for pattern in _PICKLE_WEIGHTS for p in path.glob(pattern))
        if pickled:
            raise CheckpointError(f"{path} has only pickled weights ({', '.join(pickled[:3])}); longquant loads "
                                  "safetensors only. Convert them, e.g. with `save_pretrained(safe_serialization=True)`")
        raise CheckpointError(f"{path} has no *.safetensors weight files")
    return tensors


def fingerprint(path: str | Path) -> str:
    """sha256 over config, generation config, tokenizer files, and each weight file's name and content digest."""
    root = Path(path)
    if not (root / "config.json").is_file():
        raise CheckpointError(f"{root} is not a checkpoint folder (no config.json)")
    digest = hashlib.sha256()
    for name in ("config.json", "generation_config.json", *_TOKENIZER_FILES):
        file = root / name
        if file.is_file():
            digest.update(name.encode() + b"\x00" + _content(file) + b"\x00")
    for tensor_file in check_safe_weights(root):
        digest.update(f"{tensor_file.name}\x00{file_digest(tensor_file)}\x00".encode())
    return digest.hexdigest()


# Stamps a writer adds that say nothing about the model: a re-save by another transformers is the same checkpoint.
_WRITER_STAMPS = ("transformers_version",)


def _content(file: Path) -> bytes:
    """A file's bytes for the fingerprint; JSON configs canonically (sorted keys, writer stamps dropped)."""
    raw = file.read_bytes()
    if file.name not in ("config.json", "generation_config.json"):
        return raw
    try:
        data = json.loads(raw)
    except ValueError:
        return raw
    if isinstance(data, dict):
        for key in _WRITER_STAMPS:
            data.pop(key, None)
    return json.dumps(data, sort_keys=True, separators=(",", ":")).encode()


def read_config(path: str | Path) -> dict[str, Any]:
    file = Path(path) / "config.json"
    try:
        return json.loads(file.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise CheckpointError(f"{path} is not a checkpoint folder (no config.json)") from exc
    except json.JSONDecodeError as exc:
        raise CheckpointError(f"{file}: not valid JSON ({exc.msg})") from exc


def infer_precision(config: dict[str, Any]) -> str:
    """Precision class from a checkpoint's quantization_config (its lowest weight bit width)."""
    q = config.get("quantization_config")
    if not q:
        return "16-bit"
    method = str(q.get("quant_method", "")).lower()
    bits: int | None = None
    if method == "bitsandbytes":
        bits = 4 if q.get("load_in_4bit") else 8
    elif method in ("gptq", "awq", "autoround", "auto-round", "hqq", "quanto"):
        bits = int(q.get("bits", q.get("w_bit", q.get("nbits", 4))))
    elif method in ("fp8", "fbgemm_fp8", "fine_grained_fp8"):
        bits = 8
    elif method == "compressed-tensors":
        widths = [g.get("weights", {}).get("num_bits") for g in q.get("config_groups", {}).values()]
        widths = [w for w in widths if isinstance(w, int)]
        bits = min(widths) if widths else None
    if bits is None:
        raise CheckpointError(f"cannot tell the precision of quantization_config {json.dumps(q)[:200]}; "
                              "set `precision` (16-bit, 8-bit or 4-bit) for this checkpoint")
    return "4-bit" if bits <= 4 else "8-bit" if bits <= 8 else "16-bit"
