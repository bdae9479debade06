"""Planted damage for the divergence signal's sensitivity test (tests/test_divergence_demo.py, bench/): Gaussian
noise on the attention key and value projections of the demo model, sized relative to each weight row's spread."""

from __future__ import annotations

import shutil
from pathlib import Path


def kv_noise(source: Path, out: Path, sigma: float, seed: int = 0) -> Path:
    """A copy of `source` whose k_proj / v_proj weights get N(0, (sigma * std of their row)^2) added."""
    import torch
    from safetensors.torch import load_file, save_file

    out.mkdir(parents=True, exist_ok=True)
    for f in Path(source).iterdir():
        if f.suffix != ".safetensors" and f.is_file():
            shutil.copy(f, out / f.name)
    tensors = load_file(str(next(Path(source).glob("*.safetensors"))))
    generator = torch.Generator().manual_seed(seed)
    for name in sorted(tensors):
        t = tensors[name]
        if name.endswith(("k_proj.weight", "v_proj.weight")):
            row_std = t.float().std(dim=1, keepdim=True)
            noise = torch.randn(t.shape, generator=generator) * row_std * sigma
            tensors[name] = (t.float() + noise).to(t.dtype).contiguous()
    save_file(tensors, str(out / "model.safetensors"), metadata={"format": "pt"})
    return out
