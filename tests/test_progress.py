"""Live progress (progress.py): the rich board, a worker's file and the controller's poller. The real runs are in
tests/test_cli_gate.py (xdist under CI: one line per cell per worker); here the pieces, with a recording console."""

from __future__ import annotations

import io
import json

from rich.console import Console

from longquant_checks.progress import Board, Messages, Poller, Progress, WorkerFile, as_progress


def board() -> tuple[Board, io.StringIO]:
    out = io.StringIO()
    return Board(Console(file=out, force_terminal=True, width=140), min_interval=0), out


def test_board_shows_samples_cells_and_an_eta_per_checkpoint():
    b, out = board()
    b.stream_started("nf4", cells=2, samples=4)
    for _ in range(3):
        b.sample_done("nf4")
    b.cell_done("nf4", "nf4 niah_single_3-1K-en: 50.0 (2 samples, 3 s into the stream)")
    b.close()
    text = out.getvalue()
    assert "nf4" in text and "3/4" in text and "1/2 cells" in text and "ETA" in text
    assert "longquant: nf4 niah_single_3-1K-en: 50.0" in text  # the finished cell, as a line above the bars
    task = b.bars.tasks[b.tasks["nf4"]]
    assert task.completed == 3 and task.total == 4


def test_board_writes_inside_its_guard_only():
    entered = []

    class Guard:
        def __enter__(self):
            entered.append(True)

        def __exit__(self, *exc):
            return False

    b, _ = board()
    b.guard = Guard
    b.stream_started("x", 1, 1)
    b("engine ready")
    assert len(entered) >= 2


def test_worker_file_and_poller_print_each_line_once_with_the_worker(tmp_path):
    lines = []
    worker = WorkerFile(tmp_path / "gw1.json", "gw1", min_interval=0)
    worker.stream_started("bnb_nf4", 2, 4)
    worker("bnb_nf4: hf engine ready in 2 s")
    worker.sample_done("bnb_nf4")
    worker.cell_done("bnb_nf4", "bnb_nf4 niah_single_3-1K-en: 50.0")
    poller = Poller(tmp_path, Messages(lines.append))
    poller.poll()
    poller.poll()  # nothing new: nothing printed again
    worker.cell_done("bnb_nf4", "bnb_nf4 niah_single_3-1K-es: 0.0")
    poller.poll()
    assert lines == ["[gw1] bnb_nf4: hf engine ready in 2 s", "[gw1] bnb_nf4 niah_single_3-1K-en: 50.0",
                     "[gw1] bnb_nf4 niah_single_3-1K-es: 0.0"]
    state = json.loads((tmp_path / "gw1.json").read_text())
    assert state["cells_done"] == 2 and state["samples_done"] == 1 and state["checkpoint"] == "bnb_nf4"


def test_poller_feeds_a_board_row_per_worker(tmp_path):
    b, _ = board()
    for worker, done in (("gw0", 3), ("gw1", 1)):
        w = WorkerFile(tmp_path / f"{worker}.json", worker, min_interval=0)
        w.stream_started(f"cand{worker[-1]}", 2, 4)
        for _ in range(done):
            w.sample_done("x")
    poller = Poller(tmp_path, b)
    poller.poll()
    completed = {t.description: t.completed for t in b.bars.tasks}
    assert completed == {"[gw0] cand0": 3, "[gw1] cand1": 1}


def test_unreadable_worker_file_is_skipped_until_next_poll(tmp_path):
    (tmp_path / "gw0.json").write_text("{half")
    lines = []
    Poller(tmp_path, Messages(lines.append)).poll()
    assert lines == []


def test_a_plain_callable_still_receives_messages_and_cells():
    got = []
    p = as_progress(got.append)
    p("hello")
    p.cell_done("c", "c cell line")
    p.sample_done("c")
    assert got == ["hello", "c cell line"]
    assert isinstance(as_progress(None), Progress)
