"""Make a candidate checkpoint from the reference with an llmcompressor recipe, cached on disk.

The quantizer runs in its own Python environment (llmcompressor and vLLM cannot share one):
$LONGQUANT_QUANT_PYTHON, else ./.venv-quant/bin/python. Produced checkpoints are cached by
`cache_key`: the reference's fingerprint (its weight bytes), the recipe's effective parameters (the
group size chosen for this model included), the compute dtype, the calibration spec and a digest of the
calibration token ids actually fed (so a change of file, generator or tokenizer is a new entry), the
quantizer environment's versions and this worker's source. The same record is kept in the entry's
longquant-recipe.json and becomes the candidate's `produced` identity. The entry is built in a temporary
folder and renamed into place under a file lock, so concurrent workers yield one valid entry and a
half-written one is never used.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

from filelock import FileLock

from ..errors import LongquantError
from ..storage import cache_dir, write_text_atomic
from .recipes import get_recipe
from .spec import fingerprint, read_config

_MARKER = "longquant-recipe.json"
_WORKER = Path(__file__).with_name("_llmcompressor_worker.py")
_SETUP = ("python3 -m venv .venv-quant && .venv-quant/bin/pip install torch==2.13.0 llmcompressor==0.14.0.1, "
          "then set LONGQUANT_QUANT_PYTHON=.venv-quant/bin/python")


class QuantizeError(LongquantError, RuntimeError):
    """The quantizer environment is missing or the recipe failed."""


@dataclass(frozen=True)
class CalibrationSpec:
    """Calibration text made locally from the task generators (no dataset download), or a user's own text file."""

    samples: int = 32
    tokens: int = 512
    languages: tuple[str, ...] = ("en",)
    seed: int = 0
    file: str | None = None  # JSONL with one {"text": ...} per line, or a UTF-8 .txt; replaces the generated prompts

    def key(self) -> dict:
        """What the produced checkpoint depends on: the file's content, not its path."""
        if not self.file:
            return {k: v for k, v in asdict(self).items() if k != "file"}
        return {"samples": self.samples, "tokens": self.tokens,
                "file_sha256": hashlib.sha256(_read_calibration_file(Path(self.file))).hexdigest()}


def _read_calibration_file(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise QuantizeError(f"calibration file {path}: {exc.strerror or exc}; give a JSONL with one "
                            '{"text": ...} per line, or a UTF-8 .txt file') from None


def quant_python() -> str:
    python = os.environ.get("LONGQUANT_QUANT_PYTHON")
    if not python:
        # ./.venv-quant, else the one next to this environment's venv (pytester and subfolders change the cwd).
        candidates = [Path(".venv-quant/bin/python"), Path(sys.prefix).parent / ".venv-quant/bin/python"]
        python = str(next((c for c in candidates if c.is_file()), candidates[0]))
    if not Path(python).is_file():
        raise QuantizeError(f"llmcompressor recipes run in their own environment, not found at {python}: "
                            f"create it with `{_SETUP}`")
    return python


def group_size_for(reference: str | Path, preferred: int = 128) -> int:
    """Largest group size <= `preferred` dividing every Linear input dimension (576 is not divisible by 128)."""
    config = read_config(reference)
    config = config.get("text_config", config)
    dims = [config[k] for k in ("hidden_size", "intermediate_size") if isinstance(config.get(k), int)]
    dims += [config["num_attention_heads"] * config.get("head_dim", config["hidden_size"] // config["num_attention_heads"])]
    size = preferred
    while size > 1 and any(d % size for d in dims):
        size //= 2
    return size


def calibration_ids(reference: str | Path, spec: CalibrationSpec) -> list[list[int]]:
    from ..samples import load_or_generate
    from ..schema import Cell
    from ..tasks.base import get_task
    from ..text.tokens import PromptTokenizer

    tok = PromptTokenizer.from_pretrained(reference)
    if spec.file:
        return _file_ids(tok, Path(spec.file), spec)
    task = get_task("niah_single_2")
    out: list[list[int]] = []
    per_language = -(-spec.samples // len(spec.languages))
    bucket = next(b for b in (1024, 2048, 4096, 8192, 16384, 32768) if b >= spec.tokens + 256)
    for language in spec.languages:
        # Through the samples cache: the ids are made once, then read (the produce cache key needs them each run).
        for sample in load_or_generate(task, Cell("niah_single_2", bucket, language), tok, per_language, spec.seed)[0]:
            out.append(sample.prompt_token_ids[: spec.tokens].tolist())
    return out[: spec.samples]


def _file_ids(tok, path: Path, spec: CalibrationSpec) -> list[list[int]]:
    """The user's text as calibration: each text tokenized and cut into `tokens`-long pieces, `samples` of them."""
    raw = _read_calibration_file(path).decode("utf-8", errors="strict")
    texts = []
    if path.suffix == ".jsonl":
        for number, line in enumerate(raw.splitlines(), 1):
            if not line.strip():
                continue
            try:
                texts.append(str(json.loads(line)["text"]))
            except (ValueError, KeyError, TypeError):
                raise QuantizeError(f'calibration file {path}, line {number}: expected a JSON object with a "text" '
                                    f"string, got {line[:80]!r}") from None
    else:
        texts = [raw]
    out = []
    for text in texts:
        ids = tok.encode(text)
        out += [ids[i:i + spec.tokens] for i in range(0, len(ids), spec.tokens) if len(ids[i:i + spec.tokens]) >= 16]
    if not out:
        raise QuantizeError(f"calibration file {path} holds no text (at least 16 tokens are needed per sample)")
    return out[: spec.samples]


_VERSIONS_OF = ("llmcompressor", "compressed-tensors", "transformers", "torch")


def quantizer_versions(python: str) -> dict[str, str]:
    """Versions of the packages in the quantizer environment that decide its output."""
    # Read from the installed metadata: importing llmcompressor logs to stdout.
    code = f"import importlib.metadata as m, json; print(json.dumps({{p: m.version(p) for p in {_VERSIONS_OF!r}}}))"
    proc = subprocess.run([python, "-c", code], capture_output=True, text=True)
    if proc.returncode != 0:
        raise QuantizeError(f"{python} lacks llmcompressor or its dependencies ({proc.stderr.strip()[-300:]}); "
                            f"`{_SETUP}`")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def effective_params(reference: str | Path, recipe_name: str) -> dict:
    """The recipe's parameters as the worker applies them to this reference (the chosen group size included)."""
    params = dict(get_recipe(recipe_name).params)
    if params["scheme"] in ("W4A16", "W4A16_ASYM"):
        params["group_size"] = group_size_for(reference)
    return params


def calibration_digest(ids: list[list[int]]) -> str:
    """sha256 of the calibration token ids, as the worker receives them."""
    return hashlib.sha256(json.dumps(ids, separators=(",", ":")).encode()).hexdigest()


def cache_key(reference_fingerprint: str, recipe_name: str, params: dict, compute_dtype: str,
              calibration: CalibrationSpec | None, calibration_ids_sha256: str | None,
              quantizer: dict[str, str]) -> tuple[str, dict]:
    """(key, record): everything the produced checkpoint depends on, and its sha256."""
    record = {"reference": reference_fingerprint, "recipe": recipe_name, "params": params,
              "compute_dtype": compute_dtype, "calibration": calibration.key() if calibration else None,
              "calibration_ids_sha256": calibration_ids_sha256, "quantizer": quantizer,
              # the worker's defaults (ignored layers, AWQ n_grid, symmetry) are parameters too
              "worker_sha256": hashlib.sha256(_WORKER.read_bytes()).hexdigest()}
    return hashlib.sha256(json.dumps(record, sort_keys=True).encode()).hexdigest(), record


def produced_record(path: str | Path) -> dict:
    """The record a produced checkpoint was made from (its cache key's parts), read from its marker."""
    return json.loads((Path(path) / _MARKER).read_text(encoding="utf-8"))["record"]


def produce(reference: str | Path, recipe_name: str, calibration: CalibrationSpec = CalibrationSpec()) -> Path:
    """The cached checkpoint of `recipe_name` applied to `reference`, produced once."""
    recipe = get_recipe(recipe_name)
    if recipe.kind != "llmcompressor":
        raise QuantizeError(f"recipe {recipe_name!r} is applied while loading, not produced; pass it to the engine")
    python = quant_python()
    params = effective_params(reference, recipe_name)
    needs_data = params["scheme"] != "FP8_DYNAMIC"
    from ..engines.base import cpu_dtype

    compute_dtype = cpu_dtype()  # the quantizer runs on CPU here (no CUDA torch in .venv-quant)
    # Made before the cache lookup: the key follows the ids actually fed, not only the spec that made them.
    ids = calibration_ids(reference, calibration) if needs_data else []
    key, record = cache_key(fingerprint(reference), recipe_name, params, compute_dtype,
                            calibration if needs_data else None, calibration_digest(ids) if needs_data else None,
                            quantizer_versions(python))
    target = cache_dir("checkpoints") / f"{recipe_name}-{key[:16]}"
    with FileLock(str(target) + ".lock"):
        if (target / _MARKER).is_file():
            return target
        with tempfile.TemporaryDirectory(dir=target.parent, prefix=f".{recipe_name}-") as tmp:
            job = {"reference": str(reference), "params": params, "output": str(Path(tmp) / "out"),
                   "compute_dtype": compute_dtype,
                   "calibration_ids": ids}
            job_file = Path(tmp) / "job.json"
            job_file.write_text(json.dumps(job), encoding="utf-8")
            proc = subprocess.run([python, str(_WORKER), str(job_file)], capture_output=True, text=True)
            if proc.returncode != 0:
                tail = "\n".join((proc.stderr or proc.stdout).strip().splitlines()[-8:])
                raise QuantizeError(f"recipe {recipe_name!r} on {reference} failed (exit {proc.returncode}):\n{tail}")
            out = Path(job["output"])
            write_text_atomic(out / _MARKER, json.dumps({"key": key, "record": record}, indent=2, sort_keys=True))
            if target.exists():
                shutil.rmtree(target)
            os.replace(out, target)
    return target
