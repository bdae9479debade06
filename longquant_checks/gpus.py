"""GPU allocation for xdist workers: which CUDA_VISIBLE_DEVICES each worker gets.

A checkpoint's tensor x pipeline x data parallel size decides how many GPUs its engine spans. xdist hands checkpoint
groups to whichever worker is free, so every worker must be able to run the largest of them: each gets a disjoint
slice of `widest` GPUs, `-n auto` means GPUs // widest workers, and GPUs left over after the last full slice go to
the last worker (so together the slices use every GPU). Pure logic over device lists: tested without GPUs.
"""

from __future__ import annotations

from .errors import SettingsError


def auto_workers(devices: list[str], widest: int) -> int:
    """`-n auto` on a GPU plan: as many workers as full slices of the widest checkpoint."""
    if widest < 1:
        raise SettingsError(f"a checkpoint spans {widest} GPUs; it must span at least 1")
    if len(devices) < widest:
        raise SettingsError(f"a checkpoint spans {widest} GPUs (tensor x pipeline x data parallel size) but "
                            f"{len(devices)} are visible ({','.join(devices) or 'none'})")
    return len(devices) // widest


def slices(devices: list[str], widest: int, workers: int) -> list[list[str]]:
    """Each worker's GPUs: disjoint, `widest` each, the remainder with the last worker. Refuses what cannot run."""
    fits = auto_workers(devices, widest)
    if workers < 1:
        raise SettingsError(f"{workers} workers: at least 1 is needed")
    if workers > fits:
        raise SettingsError(
            f"-n {workers} workers x {widest} GPUs each (the widest checkpoint's tensor x pipeline x data parallel "
            f"size) needs {workers * widest} GPUs, but {len(devices)} are visible ({','.join(devices)}): use "
            f"-n {fits} (or -n auto), or smaller parallel sizes")
    out = [devices[i * widest:(i + 1) * widest] for i in range(workers)]
    out[-1] = out[-1] + devices[workers * widest:]
    return out
