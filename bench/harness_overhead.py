"""The gate's run stage against bare vLLM, on the same token prompts, in one run: start and generation separately.

Gate: the vLLM engine as the gate opens it (own worker process, spawned) and the checkpoint's cells through
CheckpointRunner.run_many (one stream, each cell scored and saved as it finishes; a fresh results folder, so
nothing comes from the resume cache). Bare: a fresh Python process that imports vLLM, builds `LLM(...)` with the
same arguments and calls `LLM.generate` once on every prompt of the plan. Prompts are built (and cached) before
either is timed. The two answer sets are compared (greedy: they should match).

Usage (GPU):  python bench/harness_overhead.py --device cuda --tasks niah_single_2,niah_single_3,niah_multivalue,vt \
                  --buckets 4K --languages en -n 50
      (CPU):  python bench/harness_overhead.py --device cpu --tasks niah_single_2 --buckets 1K -n 8
Prints one line per figure and the ratios gate/bare; figures go to docs/gpu.md and docs/engines.md.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from longquant_checks import PromptTokenizer, demo_model_path
from longquant_checks.checkpoints.resolve import ResolvedCheckpoint
from longquant_checks.evaluate import CheckpointRunner
from longquant_checks.results import ResultStore
from longquant_checks.samples import SampleBook
from longquant_checks.schema import Cell, parse_bucket
from longquant_checks.setups import EngineSetup

BARE = r"""
import json, sys, time
import numpy as np
t0 = time.perf_counter()
import vllm
from vllm import SamplingParams
from vllm.inputs import TokensPrompt
args = json.loads(sys.argv[1])
llm = vllm.LLM(model=args["model"], **args["llm"])
start = time.perf_counter() - t0
data = np.load(args["prompts"])
ids, offsets, budgets = data["ids"], data["offsets"], data["budgets"]
prompts = [TokensPrompt(prompt_token_ids=ids[offsets[i]:offsets[i + 1]].tolist()) for i in range(len(budgets))]
params = [SamplingParams(temperature=0.0, max_tokens=int(b)) for b in budgets]
t1 = time.perf_counter()
outs = llm.generate(prompts, params, use_tqdm=False)
gen = time.perf_counter() - t1
json.dump({"start": start, "generate": gen, "texts": [o.outputs[0].text for o in outs]}, open(args["out"], "w"))
"""


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default=None, help="checkpoint path (default: the demo model)")
    p.add_argument("--device", default="cuda")
    p.add_argument("--tasks", default="niah_single_2")
    p.add_argument("--buckets", default="4K")
    p.add_argument("--languages", default="en")
    p.add_argument("-n", type=int, default=50)
    p.add_argument("--engine-args", default="{}", help="JSON: vLLM settings shared by both (e.g. max_model_len)")
    p.add_argument("--json", default=None, help="also write the figures here")
    args = p.parse_args()
    model = args.model or str(demo_model_path())
    settings = json.loads(args.engine_args)
    cells = [Cell(t, parse_bucket(b), lang) for t in args.tasks.split(",") for b in args.buckets.split(",")
             for lang in args.languages.split(",")]
    tok = PromptTokenizer.from_pretrained(model)
    book = SampleBook(tok, args.n, 0)
    t0 = time.perf_counter()
    samples = [s for cell in cells for s in book.samples(cell)]
    build = time.perf_counter() - t0
    n_tokens = sum(s.n_tokens for s in samples)
    print(f"plan: {len(cells)} cells x n={args.n} = {len(samples)} prompts, {n_tokens} prompt tokens "
          f"(built or read from the samples cache in {build:.1f} s); device {args.device}")

    setup = EngineSetup("vllm", args.device, settings)
    from longquant_checks.engines.vllm import cpu_env, llm_arguments, resolve_settings

    resolved = resolve_settings(args.device, dict(settings))
    llm_args = llm_arguments(resolved)

    with tempfile.TemporaryDirectory() as tmp:
        # Bare vLLM first, in its own process (so this one never holds a second engine).
        ids = np.concatenate([np.asarray(s.prompt_token_ids, dtype=np.uint32) for s in samples])
        offsets = np.cumsum([0] + [s.n_tokens for s in samples])
        np.savez(Path(tmp) / "prompts.npz", ids=ids, offsets=offsets, budgets=[s.max_new_tokens for s in samples])
        job = {"model": model, "llm": llm_args, "prompts": str(Path(tmp) / "prompts.npz"), "out": str(Path(tmp) / "bare.json")}
        env = dict(os.environ)
        if args.device == "cpu":
            env = {**cpu_env(resolved), **env}
        subprocess.run([sys.executable, "-c", BARE, json.dumps(job)], check=True, env=env)
        bare = json.load(open(job["out"]))

        checkpoint = ResolvedCheckpoint("bench", model, "16-bit", "bench")
        runner = CheckpointRunner(checkpoint, setup, ResultStore(Path(tmp) / "results"), book,
                                  progress=lambda m: print("  gate:", m, flush=True))
        t0 = time.perf_counter()
        engine = runner.engine
        gate_start = time.perf_counter() - t0
        t1 = time.perf_counter()
        results = runner.run_many(cells)
        gate_gen = time.perf_counter() - t1
        runner.close()
    failed = {c.id: str(r) for c, r in results.items() if isinstance(r, Exception)}
    if failed:
        raise SystemExit(f"gate cells failed: {failed}")
    gate_texts = [r.text for cell in cells for r in results[cell].samples]
    same = sum(a == b for a, b in zip(gate_texts, bare["texts"]))
    figures = {
        "prompts": len(samples), "prompt_tokens": n_tokens, "device": args.device, "vllm": engine.info.version,
        "start_gate_s": round(gate_start, 2), "start_bare_s": round(bare["start"], 2),
        "start_ratio": round(gate_start / bare["start"], 3),
        "generate_gate_s": round(gate_gen, 2), "generate_bare_s": round(bare["generate"], 2),
        "generate_ratio": round(gate_gen / bare["generate"], 3),
        "prompt_tokens_per_s_gate": round(n_tokens / gate_gen), "prompt_tokens_per_s_bare": round(n_tokens / bare["generate"]),
        "same_answers": f"{same}/{len(samples)}",
    }
    for key, value in figures.items():
        print(f"{key:28} {value}")
    if args.json:
        Path(args.json).write_text(json.dumps(figures, indent=2))


if __name__ == "__main__":
    main()
