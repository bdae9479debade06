"""Recipes that make a candidate from the reference, and which engine/hardware runs which: data, not ifs.

`SUPPORT` records what was measured (docs and ../shared/ENVIRONMENT.md): an unsupported pair is
skipped with its reason, never silently run wrong.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ..errors import UnknownValueError


@dataclass(frozen=True)
class Recipe:
    name: str
    precision: str
    kind: str  # "inflight" (quantized while loading) or "llmcompressor" (a produced checkpoint)
    description: str
    params: dict[str, Any] = field(default_factory=dict)


RECIPES: dict[str, Recipe] = {r.name: r for r in (
    Recipe("bnb-int8", "8-bit", "inflight", "bitsandbytes LLM.int8 while loading (transformers)",
           {"method": "bitsandbytes", "bits": 8}),
    Recipe("bnb-nf4", "4-bit", "inflight", "bitsandbytes 4-bit NF4 while loading (transformers), bf16 compute",
           {"method": "bitsandbytes", "bits": 4, "quant_type": "nf4"}),
    Recipe("fp8-per-channel", "8-bit", "inflight", "vLLM in-flight FP8 per-channel weights (runs on CPU)",
           {"method": "vllm", "quantization": "fp8_per_channel"}),
    Recipe("fp8-inflight", "8-bit", "inflight", "vLLM in-flight per-tensor FP8 (CUDA only)",
           {"method": "vllm", "quantization": "fp8"}),
    Recipe("fp8-dynamic", "8-bit", "llmcompressor", "FP8 weights, dynamic per-token FP8 activations, no calibration",
           {"scheme": "FP8_DYNAMIC"}),
    Recipe("w8a8-int8", "8-bit", "llmcompressor", "SmoothQuant 0.8 + GPTQ W8A8 (int8 weights and activations)",
           {"scheme": "W8A8", "smoothing": 0.8}),
    Recipe("gptq-w8a16", "8-bit", "llmcompressor", "GPTQ int8 weight-only", {"scheme": "W8A16"}),
    Recipe("gptq-w4a16", "4-bit", "llmcompressor", "GPTQ int4 weight-only, grouped", {"scheme": "W4A16"}),
    Recipe("awq-w4a16", "4-bit", "llmcompressor", "AWQ + int4 asymmetric weight-only, grouped", {"scheme": "W4A16_ASYM"}),
)}

# (recipe, engine, device) -> reason it cannot run. Pairs not listed run. Engines: hf, vllm, openai
# (openai serves whatever its server serves: its managed mode inherits vllm's rows).
UNSUPPORTED: dict[tuple[str, str, str], str] = {
    **{(r, e, d): "vLLM 0.32+ has no bitsandbytes method (the out-of-tree vllm-bnb-plugin is not proven here); "
                  "run bitsandbytes recipes with the transformers engine"
       for r in ("bnb-int8", "bnb-nf4") for e in ("vllm", "openai") for d in ("cpu", "cuda")},
    **{("fp8-per-channel", "hf", d): "in-flight fp8_per_channel is a vLLM option; use the vllm engine"
       for d in ("cpu", "cuda")},
    **{("fp8-inflight", "hf", d): "in-flight per-tensor fp8 is a vLLM option; use the vllm engine"
       for d in ("cpu", "cuda")},
    ("fp8-inflight", "vllm", "cpu"): "vLLM's per-tensor fp8 needs CUDA (its CPU build fails on the CUDA-only op); "
                                     "use fp8-per-channel on CPU",
    ("fp8-inflight", "openai", "cpu"): "vLLM's per-tensor fp8 needs CUDA",
    ("gptq-w8a16", "vllm", "cpu"): "vLLM's CPU weight-only kernel (CPUWNA16) is 4-bit only: "
                                   "'Quant type uint8b128 not supported'; run it on CUDA or with the hf engine",
    ("gptq-w8a16", "openai", "cpu"): "vLLM's CPU weight-only kernel (CPUWNA16) is 4-bit only",
}


def get_recipe(name: str) -> Recipe:
    if name not in RECIPES:
        raise UnknownValueError("recipe", name, list(RECIPES))
    return RECIPES[name]


def unsupported_reason(recipe: str | None, engine: str, device: str) -> str | None:
    """Why `recipe` cannot run on `engine` on `device` (cpu/cuda), or None if it can."""
    if recipe is None:
        return None
    get_recipe(recipe)
    return UNSUPPORTED.get((recipe, engine, "cuda" if device.startswith("cuda") else device))
