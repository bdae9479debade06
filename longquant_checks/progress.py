"""Live progress of a gate run: per checkpoint and per cell, with an ETA, built on rich.

The runner (evaluate.py) reports events to a `Progress`: a message, a stream started (its cells and samples), a
sample answered, a cell finished. Where they go:
- `Board`: a rich progress display, one row per checkpoint (or per xdist worker), with samples done, cells done,
  elapsed and remaining time;
- `Lines`: CI or no terminal: quiet but alive, one line per finished cell (and per engine start);
- `WorkerFile`: an xdist worker cannot write to the terminal; it writes its state to a small JSON file, atomically
  and at most twice a second, which the controller's `Poller` thread reads into the controller's Board or Lines.
"""

from __future__ import annotations

import contextlib
import json
import os
import threading
import time
from pathlib import Path
from typing import Any, Callable

from .storage import write_text_atomic


class Progress:
    """The events a run reports; this base class drops them (a library user who wants none)."""

    def __call__(self, message: str) -> None:  # free-form: engine ready, re-scored cells
        pass

    def stream_started(self, checkpoint: str, cells: int, samples: int) -> None:
        pass

    def sample_done(self, checkpoint: str) -> None:
        pass

    def cell_done(self, checkpoint: str, line: str) -> None:
        pass

    def close(self) -> None:
        pass


class Messages(Progress):
    """Forwards messages and finished cells as lines to a callable (the runner's old `progress` callback)."""

    def __init__(self, write: Callable[[str], None]):
        self.write = write

    def __call__(self, message: str) -> None:
        self.write(message)

    def cell_done(self, checkpoint: str, line: str) -> None:
        self.write(line)


def as_progress(progress: "Progress | Callable[[str], None] | None") -> Progress:
    if progress is None:
        return Progress()
    return progress if isinstance(progress, Progress) else Messages(progress)


class Board(Progress):
    """A rich progress display; `guard` wraps each terminal write (pytest's capture is suspended inside it)."""

    def __init__(self, console, guard: Callable[[], Any] | None = None, min_interval: float = 0.25):
        from rich.progress import (BarColumn, MofNCompleteColumn, Progress as RichProgress, TextColumn,
                                   TimeElapsedColumn, TimeRemainingColumn)

        self.console = console
        self.guard = guard
        self.min_interval = min_interval
        self._last = 0.0
        self._lock = threading.Lock()
        self.bars = RichProgress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                                 TextColumn("samples, {task.fields[cells]} cells"), TimeElapsedColumn(),
                                 TextColumn("ETA"), TimeRemainingColumn(), console=console, auto_refresh=False,
                                 transient=False)
        self.tasks: dict[str, int] = {}
        self.cells: dict[str, tuple[int, int]] = {}
        self._started = False

    def _draw(self, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self._last < self.min_interval:
            return
        self._last = now
        with self.guard() if self.guard else contextlib.nullcontext():
            if not self._started:
                self.bars.start()
                self._started = True
            self.bars.refresh()

    def __call__(self, message: str) -> None:
        with self._lock, self.guard() if self.guard else contextlib.nullcontext():
            self.bars.console.print(f"longquant: {message}", highlight=False, markup=False)

    def stream_started(self, checkpoint: str, cells: int, samples: int) -> None:
        with self._lock:
            self.cells[checkpoint] = (0, cells)
            if checkpoint in self.tasks:
                self.bars.reset(self.tasks[checkpoint], total=samples, cells=f"0/{cells}")
            else:
                self.tasks[checkpoint] = self.bars.add_task(checkpoint, total=samples, cells=f"0/{cells}")
            self._draw(force=True)

    def set(self, row: str, *, description: str, samples_done: int, samples: int, cells_done: int, cells: int) -> None:
        """A row's absolute state (the controller's view of a worker)."""
        with self._lock:
            if row not in self.tasks:
                self.tasks[row] = self.bars.add_task(description, total=samples, cells=f"{cells_done}/{cells}")
            self.bars.update(self.tasks[row], description=description, total=samples, completed=samples_done,
                             cells=f"{cells_done}/{cells}")
            self._draw()

    def sample_done(self, checkpoint: str) -> None:
        with self._lock:
            if checkpoint in self.tasks:
                self.bars.advance(self.tasks[checkpoint])
                self._draw()

    def cell_done(self, checkpoint: str, line: str) -> None:
        with self._lock:
            done, total = self.cells.get(checkpoint, (0, 0))
            self.cells[checkpoint] = (done + 1, total)
            if checkpoint in self.tasks:
                self.bars.update(self.tasks[checkpoint], cells=f"{done + 1}/{total}")
            with self.guard() if self.guard else contextlib.nullcontext():
                self.bars.console.print(f"longquant: {line}", highlight=False, markup=False)
            self._draw(force=True)

    def close(self) -> None:
        with self._lock:
            if self._started:
                with self.guard() if self.guard else contextlib.nullcontext():
                    self.bars.refresh()
                    self.bars.stop()
                self._started = False


class WorkerFile(Progress):
    """An xdist worker's state for the controller: checkpoint, samples and cells done and planned, finished-cell lines
    and messages (each numbered, so the controller prints each once)."""

    def __init__(self, path: Path, worker: str, min_interval: float = 0.5):
        self.path, self.worker, self.min_interval = Path(path), worker, min_interval
        self.state: dict[str, Any] = {"worker": worker, "checkpoint": "", "samples": 0, "samples_done": 0,
                                      "cells": 0, "cells_done": 0, "lines": []}
        self._last = 0.0

    def _write(self, force: bool = False) -> None:
        now = time.monotonic()
        if force or now - self._last >= self.min_interval:
            self._last = now
            try:
                write_text_atomic(self.path, json.dumps(self.state))
            except OSError:
                pass  # progress is never worth failing a run for

    def __call__(self, message: str) -> None:
        self.state["lines"].append(message)
        self._write(force=True)

    def stream_started(self, checkpoint: str, cells: int, samples: int) -> None:
        self.state.update(checkpoint=checkpoint, samples=samples, samples_done=0, cells=cells, cells_done=0)
        self._write(force=True)

    def sample_done(self, checkpoint: str) -> None:
        self.state["samples_done"] += 1
        self._write()

    def cell_done(self, checkpoint: str, line: str) -> None:
        self.state["cells_done"] += 1
        self.state["lines"].append(line)
        self._write(force=True)


class Poller:
    """The xdist controller's thread: reads every worker's file and shows it (Board rows per worker, or lines)."""

    def __init__(self, folder: Path, sink: Progress, interval: float = 0.5):
        self.folder, self.sink, self.interval = Path(folder), sink, interval
        self._printed: dict[str, int] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="longquant-progress", daemon=True)

    def start(self) -> "Poller":
        self._thread.start()
        return self

    def poll(self) -> None:
        for path in sorted(self.folder.glob("*.json")):
            try:
                state = json.loads(path.read_text(encoding="utf-8"))
            except (OSError, ValueError):
                continue  # replaced while read: the next poll has it
            worker = state.get("worker", path.stem)
            lines = state.get("lines", [])
            for line in lines[self._printed.get(worker, 0):]:
                self.sink(f"[{worker}] {line}")
            self._printed[worker] = len(lines)
            if isinstance(self.sink, Board) and state.get("checkpoint"):
                self.sink.set(worker, description=f"[{worker}] {state['checkpoint']}",
                              samples_done=state.get("samples_done", 0), samples=state.get("samples", 0),
                              cells_done=state.get("cells_done", 0), cells=state.get("cells", 0))

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.poll()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self.poll()
        self.sink.close()


def quiet() -> bool:
    """One line per cell instead of a live display: under CI, or when stdout is no terminal."""
    return os.environ.get("CI") == "true" or not os.isatty(1)
