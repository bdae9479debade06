"""Per-sample seconds of each engine x recipe on the demo model, at given buckets (CPU by default).

Every combination sees the same niah_single_2 prompts; prints seconds per sample (batched), the mean
score, and the engine start time. Produced recipes are made once (cached) with a small calibration.
Usage: python bench/engine_speed.py [--buckets 2K,4K] [-n 4] [--engines hf,vllm] [--recipes none,bnb-int8,...]
Figures go to docs/engines.md with the command that produced them.
"""

from __future__ import annotations

import argparse
import time

from longquant_checks import Cell, PromptTokenizer, demo_model_path, get_task, parse_bucket
from longquant_checks.checkpoints.produce import CalibrationSpec, produce
from longquant_checks.checkpoints.recipes import get_recipe, unsupported_reason
from longquant_checks.engines import open_engine

ALL = ["none", "bnb-int8", "bnb-nf4", "fp8-per-channel", "fp8-dynamic", "w8a8-int8", "gptq-w8a16", "gptq-w4a16",
       "awq-w4a16", "kv-fp8", "kv-quanto-int4"]


def combination(engine: str, recipe: str, reference: str) -> tuple[str, dict] | None:
    """(model path, open_engine kwargs) or None when the pair does not run on CPU."""
    if recipe == "none":
        return reference, {}
    if recipe == "kv-fp8":
        return (reference, {"kv_cache_dtype": "fp8"}) if engine == "vllm" else None
    if recipe == "kv-quanto-int4":
        return (reference, {"kv_cache": {"backend": "quanto", "nbits": 4}}) if engine == "hf" else None
    if unsupported_reason(recipe, engine, "cpu"):
        return None
    if get_recipe(recipe).kind == "inflight":
        return reference, {"recipe": recipe}
    return str(produce(reference, recipe, CalibrationSpec(samples=8, tokens=256))), {}


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--buckets", default="2K,4K")
    p.add_argument("-n", type=int, default=4)
    p.add_argument("--engines", default="hf,vllm")
    p.add_argument("--recipes", default=",".join(ALL))
    args = p.parse_args()
    reference = str(demo_model_path())
    tok = PromptTokenizer.from_pretrained(reference)
    task = get_task("niah_single_2")
    buckets = [parse_bucket(b) for b in args.buckets.split(",")]
    cells = {b: task.generate(Cell(task.name, b, "en"), tok, args.n, 0) for b in buckets}
    print(f"{'engine':6} {'recipe':16} {'start s':>7} " + " ".join(f"{'s/sample ' + str(b // 1024) + 'K':>12}"
                                                            f"{'score':>6}" for b in buckets))
    for engine in args.engines.split(","):
        for recipe in args.recipes.split(","):
            combo = combination(engine, recipe, reference)
            if combo is None:
                continue
            path, kwargs = combo
            t0 = time.perf_counter()
            with open_engine(engine, path, max_model_len=max(buckets), **kwargs) as eng:
                start = time.perf_counter() - t0
                row = []
                for b in buckets:
                    t1 = time.perf_counter()
                    outs = eng.generate(cells[b])
                    per = (time.perf_counter() - t1) / len(outs)
                    score = sum(task.score(s, o.text) for s, o in zip(cells[b], outs)) / len(outs)
                    row.append(f"{per:12.2f}{score:6.2f}")
            print(f"{engine:6} {recipe:16} {start:7.0f} " + " ".join(row), flush=True)


if __name__ == "__main__":
    main()
