"""How long are the demo model's answers per task family, against each family's generation budget?

Runs the real SmolLM2-135M-Instruct (transformers, CPU) on a few samples per family and prints, per
task: mean score, output tokens (max), the budget, and how many answers hit the budget (cut short).
Usage: python bench/answer_lengths.py [--bucket 1K] [--languages en] [-n 2] [--tasks ...]
"""

from __future__ import annotations

import argparse
import time

from longquant_checks import Cell, PromptTokenizer, demo_model_path, get_task, parse_bucket, task_names
from longquant_checks.engines.hf import HFEngine


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--bucket", default="1K")
    p.add_argument("--languages", default="en")
    p.add_argument("-n", type=int, default=2)
    p.add_argument("--tasks", default=",".join(task_names()))
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    path = demo_model_path()
    tok = PromptTokenizer.from_pretrained(path)
    bucket = parse_bucket(args.bucket)
    print(f"{'task':16} {'lang':4} {'score':>6} {'out max':>7} {'budget':>6} {'cut':>4} {'s/sample':>8}  first answer")
    with HFEngine(str(path), batch_size=args.n) as engine:
        for name in args.tasks.split(","):
            task = get_task(name)
            for lang in args.languages.split(","):
                samples = task.generate(Cell(name, bucket, lang), tok, args.n, args.seed)
                t0 = time.perf_counter()
                outs = engine.generate(samples)
                per = (time.perf_counter() - t0) / len(samples)
                scores = [task.score(s, o.text) for s, o in zip(samples, outs)]
                cut = sum(o.finish_reason == "length" for o in outs)
                print(f"{name:16} {lang:4} {sum(scores) / len(scores):6.2f} {max(o.n_output_tokens for o in outs):7d} "
                      f"{samples[0].max_new_tokens:6d} {cut:4d} {per:8.1f}  {outs[0].text[:90]!r}", flush=True)


if __name__ == "__main__":
    main()
