"""The cell issue 12 compared with lm-eval's RULER: niah_single_1 4K en, n=20, transformers on CPU, batch 4; the
flow without pytest (build the samples, load the model, generate, score), timed. `now`: today's framing (no system
prompt, answer prefix); `before`: the previous one (the template's default system prompt, no prefix).

Usage: python bench/lmeval_cell.py now|before
"""
import time, sys
t0 = time.perf_counter()
from longquant_checks import Cell, PromptTokenizer, demo_model_path, get_task
from longquant_checks.engines.hf import HFEngine
from longquant_checks.text.tokens import MODEL_DEFAULT, PromptStyle
style = PromptStyle() if sys.argv[1] == "now" else PromptStyle(MODEL_DEFAULT, answer_prefix=False)
path = demo_model_path()
tok = PromptTokenizer.from_pretrained(path, style=style)
task = get_task("niah_single_1")
samples = task.generate(Cell("niah_single_1", 4096, "en"), tok, 20, 0)
t1 = time.perf_counter()
with HFEngine(str(path), batch_size=4) as engine:
    t2 = time.perf_counter()
    outs = engine.generate(samples)
t3 = time.perf_counter()
scores = [task.score(s, o.text) for s, o in zip(samples, outs)]
print(f"{sys.argv[1]}: total {t3 - t0:.1f} s (build {t1 - t0:.1f}, load {t2 - t1:.1f}, generate {t3 - t2:.1f}); "
      f"score {sum(scores) / len(scores):.2f}; output tokens mean {sum(o.n_output_tokens for o in outs) / len(outs):.1f}, "
      f"budget {samples[0].max_new_tokens}, cut {sum(o.finish_reason == 'length' for o in outs)}")
