"""A long-context gate run, measured: prompt building, peak host memory, prompt tokens/s and wall time.

1. Builds every sample of the plan into an empty samples cache and times it (seconds per sample, per bucket).
2. Runs the gate (`pytest -p longquant_checks.plugin` on the config, baselines written with
   --lq-update-baselines=missing into a fresh folder) while sampling, every 0.5 s, the resident memory of the
   pytest process and of its whole process tree (vLLM workers included).
3. Reads the results: prompt tokens/s per checkpoint (prompt tokens / generation seconds).

Usage: python bench/long_context.py fixtures/gpu-128k.toml [--samples 4] [--out DIR]
Figures go to docs/gpu.md with the command and the device.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import threading
import time
import tomllib
from collections import defaultdict
from pathlib import Path

from longquant_checks.plugin import plugin_args
from longquant_checks.config import load_config
from longquant_checks.plan import plan_cells
from longquant_checks.samples import SampleBook
from longquant_checks.schema import bucket_label
from longquant_checks.text.tokens import PromptTokenizer
from longquant_checks.checkpoints.resolve import resolve

PAGE = os.sysconf("SC_PAGE_SIZE")


def _rss(pid: int) -> int:
    try:
        return int(open(f"/proc/{pid}/statm").read().split()[1]) * PAGE
    except (OSError, IndexError, ValueError):
        return 0


def _children(pid: int) -> list[int]:
    found = []
    try:
        for task in os.listdir(f"/proc/{pid}/task"):
            found += [int(c) for c in open(f"/proc/{pid}/task/{task}/children").read().split()]
    except OSError:
        pass
    return found


def _tree(pid: int) -> list[int]:
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo += _children(p)
    return out


class Sampler(threading.Thread):
    def __init__(self, pid: int):
        super().__init__(daemon=True)
        self.pid, self.peak_main, self.peak_tree, self.stop = pid, 0, 0, threading.Event()

    def run(self) -> None:
        while not self.stop.wait(0.5):
            self.peak_main = max(self.peak_main, _rss(self.pid))
            self.peak_tree = max(self.peak_tree, sum(_rss(p) for p in _tree(self.pid)))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("config")
    p.add_argument("--samples", type=int, default=None, help="override the config's samples")
    p.add_argument("--out", default=None, help="keep the run's folder here (default: a temporary one)")
    p.add_argument("--checkpoint", action="append", default=[], metavar="NAME=PATH",
                   help="use a ready checkpoint for candidate NAME instead of its recipe (e.g. one produced elsewhere)")
    p.add_argument("--only", default=None, help="comma-separated candidates to keep (default: all)")
    p.add_argument("--build-only", action="store_true",
                   help="only step 1, on any machine: build the plan's samples, print seconds and peak RSS")
    args = p.parse_args()
    work = Path(args.out or tempfile.mkdtemp(prefix="longquant-long-"))
    work.mkdir(parents=True, exist_ok=True)
    data = tomllib.loads(Path(args.config).read_text())
    if args.samples:
        data["samples"] = args.samples
    ready = dict(item.split("=", 1) for item in args.checkpoint)
    if args.only:
        data["candidates"] = [c for c in data.get("candidates", []) if c["name"] in args.only.split(",")]
    for c in data.get("candidates", []):
        if c["name"] in ready:
            c.pop("recipe", None)
            c["source"] = ready[c["name"]]
    data.update(baseline_dir=str(work / "baselines"), results_dir=str(work / "results"))
    config_path = work / "longquant.toml"
    config_path.write_text(_to_toml(data))
    (work / "test_gate.py").write_text("def test_long_context(lq_cell):\n    lq_cell.check()\n")
    os.environ["LONGQUANT_CACHE"] = str(work / "cache")  # an empty samples cache: prompt building is timed

    config = load_config(config_path)
    g = config.gate
    reference = resolve("reference", source=g.reference.source)
    tok = PromptTokenizer.from_pretrained(reference.path)
    book = SampleBook(tok, g.samples, g.seed)
    per_bucket: dict[int, list[float]] = defaultdict(list)
    for planned in plan_cells(g.tasks, g.buckets, g.languages):
        t0 = time.perf_counter()
        samples = book.samples(planned.cell)
        per_bucket[planned.cell.bucket].append((time.perf_counter() - t0) / len(samples))
    for bucket, seconds in sorted(per_bucket.items()):
        print(f"prompt building {bucket_label(bucket):>5}: {sum(seconds) / len(seconds):.3f} s per sample "
              f"(mean over {len(seconds)} cells, max {max(seconds):.3f})", flush=True)
    print(f"prompt building: peak RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20:.2f} GB "
          f"({sum(len(v) for v in per_bucket.values())} cells x {g.samples} samples)", flush=True)
    del book
    if args.build_only:
        return

    cmd = [sys.executable, "-m", "pytest", *plugin_args(), str(work), "-q", "-p", "no:cacheprovider",
           f"--rootdir={work}", "--lq-update-baselines=missing"]
    t0 = time.perf_counter()
    with open(work / "gate.log", "w") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, cwd=work,
                                env={k: v for k, v in os.environ.items() if k != "CI"})
        sampler = Sampler(proc.pid)
        sampler.start()
        code = proc.wait()
        sampler.stop.set()
    wall = time.perf_counter() - t0
    tail = (work / "gate.log").read_text().splitlines()[-15:]
    print("\n".join(tail))
    figures = {"exit": code, "wall_s": round(wall, 1), "peak_rss_pytest_gb": round(sampler.peak_main / 2**30, 2),
               "peak_rss_tree_gb": round(sampler.peak_tree / 2**30, 2)}
    tokens: dict[str, list[float]] = defaultdict(lambda: [0, 0.0])
    for path in (work / "results").rglob("*.jsonl"):
        lines = path.read_text().splitlines()
        header = json.loads(lines[0])
        for line in lines[1:]:
            s = json.loads(line)
            tokens[header["checkpoint"]][0] += s["n_prompt_tokens"]
            tokens[header["checkpoint"]][1] += s["seconds"]
    for name, (n, seconds) in sorted(tokens.items()):
        figures[f"prompt_tokens_per_s[{name}]"] = round(n / seconds) if seconds else None
    for key, value in figures.items():
        print(f"{key:40} {value}")
    (work / "figures.json").write_text(json.dumps(figures, indent=2))


def _to_toml(data: dict) -> str:
    from longquant_checks.messages import toml_inline

    lines, tables = [], []
    for key, value in data.items():
        if key == "candidates":
            for c in value:
                tables.append("[[candidates]]\n" + "\n".join(f"{k} = {toml_inline(v)}" for k, v in c.items()))
        else:
            lines.append(f"{key} = {toml_inline(value)}")
    return "\n".join(lines) + "\n\n" + "\n\n".join(tables) + "\n"


if __name__ == "__main__":
    main()
