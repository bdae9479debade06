"""How long are the demo model's answers per task family, against each family's generation budget?

Runs the real SmolLM2-135M-Instruct (transformers, CPU) on a few samples per family and prints, per
task: mean score, output tokens (mean, max), the budget, and how many answers hit the budget (cut short).
`--compare-styles` runs each cell twice, in the same process: the previous framing (the template's default system
prompt, no answer prefix) and today's (no system prompt, answer prefix), to measure what the prefix saves.
Usage: python bench/answer_lengths.py [--bucket 1K] [--languages en] [-n 2] [--tasks ...] [--compare-styles]
"""

from __future__ import annotations

import argparse
import time

from longquant_checks import Cell, PromptTokenizer, demo_model_path, get_task, parse_bucket, task_names
from longquant_checks.engines.hf import HFEngine
from longquant_checks.text.tokens import MODEL_DEFAULT, PromptStyle


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--bucket", default="1K")
    p.add_argument("--languages", default="en")
    p.add_argument("-n", type=int, default=2)
    p.add_argument("--tasks", default=",".join(task_names()))
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--compare-styles", action="store_true")
    args = p.parse_args()
    path = demo_model_path()
    styles = {"now": PromptStyle()}
    if args.compare_styles:
        styles = {"before": PromptStyle(MODEL_DEFAULT, answer_prefix=False), **styles}
    toks = {name: PromptTokenizer.from_pretrained(path, style=style) for name, style in styles.items()}
    bucket = parse_bucket(args.bucket)
    print(f"{'task':16} {'lang':4} {'style':6} {'score':>6} {'out mean':>8} {'out max':>7} {'budget':>6} {'cut':>4} "
          f"{'s/sample':>8}  first answer")
    totals: dict[str, list[float]] = {name: [0, 0.0] for name in styles}
    with HFEngine(str(path), batch_size=args.n) as engine:
        for name in args.tasks.split(","):
            task = get_task(name)
            for lang in args.languages.split(","):
                for style, tok in toks.items():
                    samples = task.generate(Cell(name, bucket, lang), tok, args.n, args.seed)
                    t0 = time.perf_counter()
                    outs = engine.generate(samples)
                    seconds = time.perf_counter() - t0
                    per = seconds / len(samples)
                    scores = [task.score(s, o.text) for s, o in zip(samples, outs)]
                    cut = sum(o.finish_reason == "length" for o in outs)
                    mean_out = sum(o.n_output_tokens for o in outs) / len(outs)
                    totals[style][0] += sum(o.n_output_tokens for o in outs)
                    totals[style][1] += seconds
                    print(f"{name:16} {lang:4} {style:6} {sum(scores) / len(scores):6.2f} {mean_out:8.1f} "
                          f"{max(o.n_output_tokens for o in outs):7d} {samples[0].max_new_tokens:6d} {cut:4d} "
                          f"{per:8.1f}  {outs[0].text[:80]!r}", flush=True)
    for style, (tokens, seconds) in totals.items():
        print(f"# {style}: {tokens} output tokens, {seconds:.1f} s of generation in all")


if __name__ == "__main__":
    main()
