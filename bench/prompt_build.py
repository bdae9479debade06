"""How fast is token-exact prompt building, against RULER-style length fitting? (a benchmark, not a test)

For each task family x bucket x language this builds the same sample set (seed 0, indexes 0..n-1) two ways:

  ours   `task.generate(cell, tok, n, seed)`: pieces tokenized once (haystack units cached per text), the
         last haystack unit cut to the exact room left (longquant_checks/text/fitting.py).
  RULER  RULER's way of hitting a length: binary search over the haystack size, rendering the whole
         prompt (chat template included) and re-tokenizing it with the full HF tokenizer at every step,
         keeping the largest size whose token count + max_new_tokens <= bucket. For the families built by
         `assemble` (niah_*, vt, kv_recall) a bench-only `assemble` with the same signature is patched
         into the task modules (search over the number of haystack units; each insert at the unit
         boundary round(depth * N)). cwe (search over the number of list items), fwe (over the total
         word count whose Zipf counts are taken) and qa_1/qa_2 (over the number of distractor documents)
         get RULER-style builders below that reuse the task modules' helpers and language templates.
         As in RULER, the upper bound of the search is 3x an estimate from a small sample.

Both methods get a FRESH tokenizer (loaded from disk: cold per-text cache in PromptTokenizer and cold
BPE word cache in the Rust tokenizer) per (family, bucket, language); loading it is not timed.

--ruler-once adds a third column set, closer to what RULER's scripts literally do per set: the binary
search runs once (on sample 0) and every sample is then built at that size, tokenized once, and the
size lowered by `incremental` units while it overflows. Its per-sample cost shrinks as n grows, so
its amortized and marginal (after the search) seconds per sample are both printed.

Peak memory: a separate, untimed pass builds the first --mem-samples samples of each cell under
tracemalloc (Python allocations only; the Rust tokenizer's own buffers are not counted).

Usage (from the repository root):
  /work/venv/bin/python bench/prompt_build.py                      # 15 families x 4K..128K, n=3, en
  /work/venv/bin/python bench/prompt_build.py --quick              # buckets 4K,32K, n=2
  /work/venv/bin/python bench/prompt_build.py --tasks cwe,qa_1 --buckets 64K,128K -n 5 --ruler-once
"""

from __future__ import annotations

import argparse
import gc
import itertools
import platform
import random
import resource
import statistics
import string
import sys
import time
import tracemalloc
from dataclasses import dataclass, field
from datetime import datetime
from functools import partial
from typing import Callable, Iterator
from unittest import mock

import numpy as np

from longquant_checks import Cell, PromptTokenizer, bucket_label, demo_model_path, get_task, load_language, parse_bucket
from longquant_checks import task_names
from longquant_checks.schema import Sample
from longquant_checks.tasks.base import Task, depth_for, make_sample

task_names()  # register the built-in tasks in their own (RULER) order before importing modules below
from longquant_checks.tasks import cwe as cwe_mod  # noqa: E402
from longquant_checks.tasks import fwe as fwe_mod  # noqa: E402
from longquant_checks.tasks import niah as niah_mod  # noqa: E402
from longquant_checks.text.fitting import Assembled, FitError, Insert, fixed_cost
from longquant_checks.text.languages import Language

DEFAULT_BUCKETS = "4K,8K,16K,32K,64K,128K"
ASSEMBLE_TARGETS = ("longquant_checks.tasks.niah.assemble", "longquant_checks.tasks.vt.assemble",
                    "longquant_checks.tasks.kv.assemble")


# -- RULER-style fitting ---------------------------------------------------------------------------
class RulerFitter:
    """Largest size whose rendered, fully re-tokenized prompt fits `budget` tokens (RULER's search).

    `make(size)` returns the user-turn text of a prompt of that size. Every count renders the chat
    template around it and tokenizes the whole string with the HF tokenizer, as RULER does.
    once=True: search on the first call only; later calls start at that size and go down by
    `incremental` while the prompt overflows (RULER's scripts: one search per set, then a check).
    """

    def __init__(self, tok: PromptTokenizer, once: bool = False):
        self.tok = tok
        self.once = once
        self.found: int | None = None
        self.counts = 0  # full-prompt tokenizations
        self.search_seconds = 0.0  # time of the first call when once=True

    def count(self, text: str) -> list[int]:
        self.counts += 1
        return self.tok.hf(self.tok.render(text), add_special_tokens=False)["input_ids"]

    def fit(self, make: Callable[[int], str], lo: int, budget: int, incremental: int,
            cap: int | None = None) -> tuple[int, str, list[int]]:
        if self.once and self.found is not None:
            size = max(lo, self.found if cap is None else min(self.found, cap))
            while True:
                text = make(size)
                ids = self.count(text)
                if len(ids) <= budget:
                    return size, text, ids
                if size <= lo:
                    raise FitError(f"the fixed parts of this prompt take {len(ids)} tokens, more than {budget}")
                size = max(lo, size - incremental)
        t0 = time.perf_counter()
        best = self._search(make, lo, budget, incremental, cap)
        if self.once:
            self.found = best[0]
            self.search_seconds = time.perf_counter() - t0
        return best

    def _search(self, make, lo, budget, incremental, cap):
        # Upper bound as RULER: 3x the size a small sample suggests (here net of the fixed parts).
        base_text = make(lo)
        base_ids = self.count(base_text)
        if len(base_ids) > budget:
            raise FitError(f"the fixed parts of this prompt take {len(base_ids)} tokens, more than the {budget} available")
        best = (lo, base_text, base_ids)
        probe = lo + incremental if cap is None else min(lo + incremental, cap)
        if probe > lo:
            per_unit = max((len(self.count(make(probe))) - len(base_ids)) / (probe - lo), 0.25)
            hi = lo + max(int(3 * (budget - len(base_ids)) / per_unit), 2 * incremental)
        else:
            hi = lo
        low = lo + 1
        while True:
            if cap is not None:
                hi = min(hi, cap)
            top = hi
            while low <= hi:
                mid = (low + hi) // 2
                text = make(mid)
                ids = self.count(text)
                if len(ids) <= budget:
                    best = (mid, text, ids)
                    low = mid + 1
                else:
                    hi = mid - 1
            # The upper bound itself fit: the estimate was too low (rare); search above it.
            if best[0] == top > lo and (cap is None or top < cap):
                low, hi = top + 1, 2 * top
                continue
            return best


def _lazy_units(filler) -> Callable[[int], list[str]]:
    units: list[str] = []
    if hasattr(filler, "order"):  # a PieceFiller (distractor needles): its texts in their drawn order
        # (the search may ask for more than were drawn: RULER draws fresh needles, here the rest of the pool)
        filler = itertools.chain([filler.texts[i] for i in filler.order], itertools.cycle(filler.texts))
    elif hasattr(filler, "units"):  # a TextFiller
        filler = filler.units

    def first(n: int) -> list[str]:
        if filler is not None:
            while len(units) < n:
                units.append(next(filler))
        return units[:n]

    return first


def ruler_assemble(fitter: RulerFitter, tok: PromptTokenizer, head: str, tail: str, inserts: list[Insert],
                   filler: Iterator[str] | None, budget: int, cache_filler: bool = True,
                   answer_prefix: str = "") -> Assembled:
    """Drop-in for fitting.assemble: binary search over the number N of haystack units.

    text = head + units[:N] with each insert at the unit boundary round(depth * N) + tail."""
    del cache_filler  # nothing is tokenized piecewise here
    units = _lazy_units(filler)
    order = sorted(range(len(inserts)), key=lambda k: inserts[k].depth)

    def make(n: int) -> str:
        slots: dict[int, list[int]] = {}
        for k in order:
            slots.setdefault(round(inserts[k].depth * n), []).append(k)
        parts = [head]
        chosen = units(n)
        for j in range(n + 1):
            parts.extend(inserts[k].text for k in slots.get(j, ()))
            if j < n:
                parts.append(chosen[j])
        parts.append(tail)
        return "".join(parts)

    incremental = 25 if budget > 2048 else 5  # RULER: 25 noise/needle units, 5 under 4K
    prefix_text, prefix_ids = tok.answer_prefix_ids(answer_prefix)  # RULER appends its answer prefix too
    n, text, ids = fitter.fit(make, 0, budget - len(prefix_ids), incremental if filler is not None else 0,
                              cap=None if filler is not None else 0)
    positions = [{"tag": ins.tag, "token_start": None, "depth": ins.depth,
                  "actual_depth": round(round(ins.depth * n) / max(n, 1), 4)} for ins in inserts]
    return Assembled(text, list(ids) + prefix_ids, -1, positions, answer_prefix=prefix_text)


def ruler_cwe_build(task: Task, fitter: RulerFitter, cell: Cell, tok: PromptTokenizer, language: Language,
                    seed: int, index: int) -> Sample:
    """cwe the RULER way: binary search over the number of list items, each step re-tokenized.

    Same structure as ours: worked example, 10 common words x freq_c among uncommon words x freq_u
    (then single extra occurrences), numbered '1. w 2. w ...', shuffled with a fixed seed."""
    rng = task.rng(cell, seed, index)
    pool = cwe_mod._pool(language)
    rng.shuffle(pool)
    num_common = cwe_mod.NUM_COMMON
    example_common = pool[:num_common]
    example_other = pool[num_common:num_common + cwe_mod._EXAMPLE_UNCOMMON]
    common, uncommon = pool[2 * num_common:3 * num_common], pool[3 * num_common:]
    example_words = example_common * cwe_mod._EXAMPLE_COMMON + example_other
    rng.shuffle(example_words)
    nums, words = cwe_mod._numbered(example_words)
    example = (
        language.fill("cwe", "instruction") + "".join(n + w for n, w in zip(nums, words)) + "\n\n"
        + language.fill("cwe", "question", count=num_common) + "\n"
        + language.fill("cwe", "answer", count=num_common, words=language.join_list(example_common))
    )
    head = example + "\n\n" + language.fill("cwe", "instruction")
    tail = "\n\n" + language.fill("cwe", "question", count=num_common)
    max_new = task.max_new_tokens(cell, tok)
    budget = cell.bucket - max_new
    room = budget - fixed_cost(tok, head, tail)
    if room < 0.4 * cell.bucket:
        head = language.fill("cwe", "instruction")
        room = budget - fixed_cost(tok, head, tail)
    # Frequencies from a token-per-item estimate on a small numbered sample (RULER keeps them fixed).
    sample_items = " ".join(f"{max(room // 8, 2) + i}. {w}" for i, w in enumerate(uncommon[:100]))
    per_item = len(tok.encode(" " + sample_items)) / min(100, len(uncommon))
    items_fit = int(room / per_item)
    freq_c, freq_u = cwe_mod.FREQ_COMMON, cwe_mod.FREQ_UNCOMMON
    if num_common * freq_c > items_fit / 2:
        freq_c = max(2, items_fit // (2 * num_common))
        freq_u = max(1, freq_c // 10)
    elif items_fit > num_common * freq_c + freq_u * len(uncommon):
        freq_u = items_fit // (num_common * 10 + len(uncommon))
        freq_c = 10 * freq_u
    seq = [w for w in common for _ in range(freq_c)]
    mandatory = len(seq)
    seq += [w for w in uncommon for _ in range(freq_u)]
    for _ in range(max(2 * freq_u, 1) - freq_u):
        seq += uncommon
    shuffle_seed = f"{cell.id}:{seed}:{index}"

    def make(n_items: int) -> str:
        items = seq[:n_items]
        random.Random(shuffle_seed).shuffle(items)  # RULER: random.Random(args.random_seed).shuffle
        nums, words = cwe_mod._numbered(items)
        return head + "".join(a + b for a, b in zip(nums, words)) + tail

    n_items, content, ids = fitter.fit(make, mandatory, budget, 10, cap=len(seq))
    return make_sample(task, cell, seed, index, content, list(ids), list(common), max_new,
                       freq_common=freq_c, freq_uncommon=freq_u, list_length=n_items)


def ruler_fwe_build(task: Task, fitter: RulerFitter, cell: Cell, tok: PromptTokenizer, language: Language,
                    seed: int, index: int) -> Sample:
    """fwe the RULER way: binary search over the total word count whose Zipf counts are taken."""
    rng = task.rng(cell, seed, index)
    vocab: list[str] = []
    seen: set[str] = set()
    while len(vocab) < fwe_mod.VOCAB_SIZE:
        word = "".join(rng.choices(string.ascii_lowercase, k=fwe_mod.WORD_LENGTH))
        if word not in seen:
            seen.add(word)
            vocab.append(word)
    vocab[0] = fwe_mod.NOISE_WORD
    head = language.fill("fwe", "instruction") + "\n\n"
    tail = "\n\n" + language.fill("fwe", "question")
    max_new = task.max_new_tokens(cell, tok)
    weights = np.arange(1, fwe_mod.VOCAB_SIZE + 1, dtype=float) ** -fwe_mod.ALPHA
    weights /= weights.sum()
    shuffle_seed = f"{cell.id}:{seed}:{index}"

    def make(num_words: int) -> str:
        counts = np.floor(num_words * weights).astype(int)
        words = [vocab[k] for k in range(fwe_mod.VOCAB_SIZE) for _ in range(counts[k])]
        random.Random(shuffle_seed).shuffle(words)
        return head + "".join(f" {w}" for w in words) + tail

    num_words, content, ids = fitter.fit(make, 0, cell.bucket - max_new, 200)
    counts = np.floor(num_words * weights).astype(int)
    return make_sample(task, cell, seed, index, content, list(ids), vocab[1:4], max_new,
                       counts_top=[int(c) for c in counts[:5]], num_words=int(counts.sum()))


def ruler_qa_build(task: Task, fitter: RulerFitter, cell: Cell, tok: PromptTokenizer, language: Language,
                   seed: int, index: int) -> Sample:
    """qa the RULER way: binary search over the number of distractor documents (synthetic documents)."""
    rng = task.rng(cell, seed, index)
    gold, question, answers, exclude = task._gold(rng, language, index)
    distractors = task._distractors(rng, language, exclude)
    instruction = language.fill("qa", "instruction")
    head = instruction + "\n\n" + language.fill("qa", "documents_intro")
    tail = "\n\n" + instruction + "\n\n" + language.fill("qa", "question", question=question)
    max_new = task.max_new_tokens(cell, tok)
    gold = ["\n" + d.strip() for d in gold]
    gold_depths = [depth_for(index)] + [rng.randrange(40) / 39 for _ in gold[1:]]
    docs = _lazy_units(d for d in ("\n" + x.strip() for x in distractors))

    def make(n_docs: int) -> str:
        order = list(docs(n_docs))
        for text, depth in sorted(zip(gold, gold_depths), key=lambda x: x[1], reverse=True):
            order.insert(round(depth * n_docs), text)
        return head + "".join("\n\n" + language.fill("qa", "document_label", index=k) + d
                              for k, d in enumerate(order, 1)) + tail

    n_docs, content, ids = fitter.fit(make, 0, cell.bucket - max_new, 10)
    return make_sample(task, cell, seed, index, content, list(ids), answers, max_new, question=question,
                       num_documents=n_docs + len(gold), depth=gold_depths[0], source="synthetic")


RULER_BUILDERS = {"cwe": ruler_cwe_build, "fwe": ruler_fwe_build, "qa": ruler_qa_build}


def generate_ruler(task: Task, cell: Cell, tok: PromptTokenizer, n: int, seed: int,
                   once: bool = False) -> tuple[list[Sample], RulerFitter]:
    fitter = RulerFitter(tok, once=once)
    if task.family in RULER_BUILDERS:
        patches = [mock.patch.object(task, "build", partial(RULER_BUILDERS[task.family], task, fitter))]
    else:
        patches = [mock.patch(target, partial(ruler_assemble, fitter)) for target in ASSEMBLE_TARGETS]
    for p in patches:
        p.start()
    try:
        return task.generate(cell, tok, n, seed), fitter
    finally:
        for p in reversed(patches):
            p.stop()


# -- measurement -----------------------------------------------------------------------------------
@dataclass
class Result:
    seconds: float = float("nan")  # per sample
    fills: list[float] = field(default_factory=list)
    counts: float = float("nan")  # full-prompt tokenizations per sample (RULER)
    peak_mb: float = float("nan")
    marginal: float = float("nan")  # ruler-once: (set time - the one search) / (n - 1)
    error: str = ""

    @property
    def fill_min(self) -> float:
        return min(self.fills) if self.fills else float("nan")


def fills(samples: list[Sample], bucket: int) -> list[float]:
    out = []
    for s in samples:
        total = s.n_tokens + s.max_new_tokens
        if total > bucket:
            raise AssertionError(f"{s.id}: {total} tokens exceed the bucket {bucket}")
        out.append(total / bucket)
    return out


def fresh_tok(source) -> PromptTokenizer:
    niah_mod._POOLS.clear()  # the distractor-needle pools are a per-process cache too: start cold
    return PromptTokenizer.from_pretrained(source)


def timed(fn: Callable[[], tuple[list[Sample], RulerFitter | None]], n: int, bucket: int) -> Result:
    gc.collect()
    t0 = time.perf_counter()
    try:
        samples, fitter = fn()
    except FitError as exc:
        return Result(error=f"FitError: {str(exc)[:60]}")
    res = Result(seconds=(time.perf_counter() - t0) / n, fills=fills(samples, bucket))
    if fitter is not None:
        res.counts = fitter.counts / n
        if fitter.once and n > 1:
            res.marginal = (res.seconds * n - fitter.search_seconds) / (n - 1)
    return res


def peak_mb(fn: Callable[[], object]) -> float:
    gc.collect()
    tracemalloc.start()
    tracemalloc.reset_peak()
    try:
        fn()
    except FitError:
        return float("nan")
    finally:
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    return peak / 2**20


def measure(name: str, bucket: int, lang: str, n: int, seed: int, source, shared_hf, mem_samples: int,
            once: bool) -> dict[str, Result]:
    task = get_task(name)
    cell = Cell(name, bucket, lang)
    results: dict[str, Result] = {}
    tok = fresh_tok(source)
    results["ours"] = timed(lambda: (task.generate(cell, tok, n, seed), None), n, bucket)
    tok = fresh_tok(source)
    results["ruler"] = timed(lambda: generate_ruler(task, cell, tok, n, seed), n, bucket)
    if once:
        tok = fresh_tok(source)
        results["once"] = timed(lambda: generate_ruler(task, cell, tok, n, seed, once=True), n, bucket)
    del tok
    if mem_samples > 0:  # untimed: tracemalloc slows Python code; a fresh wrapper = a cold per-text cache
        m = min(mem_samples, n)
        wrap = PromptTokenizer(shared_hf, name=str(source))
        results["ours"].peak_mb = peak_mb(lambda: task.generate(cell, wrap, m, seed))
        wrap = PromptTokenizer(shared_hf, name=str(source))
        results["ruler"].peak_mb = peak_mb(lambda: generate_ruler(task, cell, wrap, m, seed))
    return results


# -- report ---------------------------------------------------------------------------------------
def fmt(x: float, spec: str) -> str:
    return "-" if x != x else format(x, spec)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tasks", default=None, help="comma-separated families (default: all)")
    p.add_argument("--buckets", default=DEFAULT_BUCKETS, help=f"comma-separated (default {DEFAULT_BUCKETS})")
    p.add_argument("--languages", default="en")
    p.add_argument("-n", type=int, default=3, help="samples per cell, indexes 0..n-1 (default 3)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--quick", action="store_true", help="buckets 4K,32K and n=2")
    p.add_argument("--mem-samples", type=int, default=1,
                   help="samples built in the untimed tracemalloc pass per cell and method (0: skip; default 1)")
    p.add_argument("--ruler-once", action="store_true",
                   help="also time RULER's one-search-per-set variant (search on sample 0, then check/step down)")
    args = p.parse_args(argv)
    if args.quick:
        args.buckets, args.n = "4K,32K", min(args.n, 2)
    names = args.tasks.split(",") if args.tasks else task_names()
    for name in names:
        get_task(name)  # unknown names fail before any work
    buckets = [parse_bucket(b) for b in args.buckets.split(",")]
    langs = args.languages.split(",")
    for lang in langs:
        load_language(lang)

    source = demo_model_path()
    shared = PromptTokenizer.from_pretrained(source)  # for the memory pass; also warms imports
    start = time.perf_counter()
    print(f"# prompt_build  {datetime.now().isoformat(timespec='seconds')}  python {platform.python_version()}  "
          f"{platform.machine()}  cpus={__import__('os').cpu_count()}", flush=True)
    print(f"# tokenizer {source.name if hasattr(source, 'name') else source}  n={args.n}  seed={args.seed}  "
          f"languages={','.join(langs)}  fresh tokenizer per (family, bucket, method); load not timed", flush=True)
    print("# s/smp: wall seconds per sample (set of n / n)   fill: min over the set of (prompt + max_new_tokens) / bucket", flush=True)
    mem = (f"tracemalloc peak of Python allocations building the first {args.mem_samples} sample(s) in a "
           "separate untimed pass; excludes the Rust tokenizer's own buffers" if args.mem_samples > 0 else "skipped")
    print(f"# steps: full-prompt tokenizations per sample (RULER)   peakMB: {mem}", flush=True)
    head = (f"{'family':16} {'bucket':>6} {'lang':4} {'ours s/smp':>10} {'RULER s/smp':>11} {'speedup':>8} "
            f"{'ours fill':>9} {'RULER fill':>10} {'steps':>5} {'ours peakMB':>11} {'RULER peakMB':>12}")
    if args.ruler_once:
        head += f" {'once s/smp':>10} {'once marg':>9} {'x once':>7} {'x marg':>7} {'once fill':>9}"
    print(head, flush=True)
    by_bucket: dict[int, list[tuple[str, float, float, float, float, float]]] = {b: [] for b in buckets}
    for bucket in buckets:
        for name in names:
            for lang in langs:
                r = measure(name, bucket, lang, args.n, args.seed, source, shared.hf, args.mem_samples,
                            args.ruler_once)
                ours, ruler = r["ours"], r["ruler"]
                if ours.error or ruler.error:
                    print(f"{name:16} {bucket_label(bucket):>6} {lang:4} skipped: {ours.error or ruler.error}",
                          flush=True)
                    continue
                speed = ruler.seconds / ours.seconds
                line = (f"{name:16} {bucket_label(bucket):>6} {lang:4} {ours.seconds:10.4f} {ruler.seconds:11.3f} "
                        f"{speed:7.1f}x {ours.fill_min:9.5f} {ruler.fill_min:10.5f} {ruler.counts:5.1f} "
                        f"{fmt(ours.peak_mb, '11.1f'):>11} {fmt(ruler.peak_mb, '12.1f'):>12}")
                once_speed = marg_speed = float("nan")
                if args.ruler_once:
                    o = r["once"]
                    if o.error:
                        line += f"  once: {o.error}"
                    else:
                        once_speed = o.seconds / ours.seconds
                        marg_speed = o.marginal / ours.seconds
                        line += (f" {o.seconds:10.3f} {fmt(o.marginal, '9.3f'):>9} {once_speed:6.1f}x "
                                 f"{fmt(marg_speed, '6.1f'):>6}x {o.fill_min:9.5f}")
                print(line, flush=True)
                by_bucket[bucket].append((name, speed, ours.fill_min, ruler.fill_min, once_speed, marg_speed))

    print("\n# summary per bucket: speedup = RULER-style s/sample / ours s/sample (same run)")
    for bucket, rows in by_bucket.items():
        if not rows:
            continue
        speeds = [r[1] for r in rows]
        slowest = min(rows, key=lambda r: r[1])
        line = (f"{bucket_label(bucket):>5}: median speedup {statistics.median(speeds):6.1f}x  "
                f"min {slowest[1]:5.1f}x ({slowest[0]})  under 10x: {sum(s < 10 for s in speeds)}/{len(speeds)}  "
                f"worst fill ours {min(r[2] for r in rows):.5f}  RULER {min(r[3] for r in rows):.5f}")
        if args.ruler_once:
            line += (f"  | once: median {statistics.median(r[4] for r in rows):.1f}x  "
                     f"marginal median {fmt(statistics.median(r[5] for r in rows), '.1f')}x")
        print(line)
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    print(f"\n# process max RSS {rss / 1024:.0f} MiB (whole run: Python + Rust tokenizer + model files)   "
          f"total wall {time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main(sys.argv[1:])
