"""The report's figures, drawn with matplotlib and returned as inline SVG (the HTML report needs no network)."""

from __future__ import annotations

import io
import itertools

from ..schema import BUCKETS
from .data import Candidate, Report

_SALT = itertools.count()


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _svg(fig) -> str:
    """The figure as an <svg> element; ids salted per figure so several figures share one page without clashes."""
    plt = _pyplot()
    with plt.rc_context({"svg.fonttype": "none", "svg.hashsalt": f"lq{next(_SALT)}"}):
        buf = io.StringIO()
        fig.savefig(buf, format="svg", bbox_inches="tight", metadata={"Date": None})  # same results, same bytes
    plt.close(fig)
    text = buf.getvalue()
    return text[text.index("<svg"):]


def _buckets(labels) -> list[str]:
    return sorted(set(labels), key=lambda b: BUCKETS.get(b, 0))


def languages_of(report: Report) -> list[str]:
    """The plan's language order (the config's), then any other language found in the tests."""
    found = [t.language for c in report.candidates for t in c.tests if t.level == "cell" and t.signal == "accuracy" and t.language]
    return list(dict.fromkeys([*(x for x in report.run.get("languages", []) if x in found), *found]))


def delta_limit(report: Report) -> float:
    """One colour scale for every heatmap of a report (at least +-10 points), so equal colours mean equal deltas."""
    deltas = [abs(t.delta) for c in report.candidates for t in c.tests if t.level == "cell" and t.signal == "accuracy" and t.delta is not None]
    return max([10.0, *deltas])


def heatmap(candidate: Candidate, task: str, languages: list[str], limit: float) -> str:
    """Delta (points) over bucket x language for one candidate and task; failing cells outlined, values written."""
    plt = _pyplot()
    cells = [t for t in candidate.tests if t.level == "cell" and t.signal == "accuracy" and t.task == task]
    buckets = _buckets(t.bucket for t in cells)
    languages = [x for x in languages if any(t.language == x for t in cells)]
    import numpy as np

    grid = np.full((len(languages), len(buckets)), np.nan)
    for t in cells:
        if t.delta is not None:
            grid[languages.index(t.language), buckets.index(t.bucket)] = t.delta
    fig, ax = plt.subplots(figsize=(1.6 + 1.1 * len(buckets), 1.0 + 0.55 * len(languages)))
    image = ax.imshow(grid, cmap="RdBu", vmin=-limit, vmax=limit, aspect="auto")
    ax.set_xticks(range(len(buckets)), buckets)
    ax.set_yticks(range(len(languages)), languages)
    ax.set_xlabel("bucket (tokens)")
    for t in cells:
        i, j = languages.index(t.language), buckets.index(t.bucket)
        text = "not run" if t.delta is None else f"{t.delta:+.0f}"
        ax.text(j, i, text, ha="center", va="center", fontsize=9,
                color="white" if t.delta is not None and abs(t.delta) > 0.6 * limit else "black")
        if t.status == "fail":
            ax.add_patch(plt.Rectangle((j - 0.5, i - 0.5), 1, 1, fill=False, edgecolor="black", linewidth=2.5))
    ax.set_title(f"{candidate.name} ({candidate.precision or '?'}): {task}\ndelta, points", fontsize=10)
    fig.colorbar(image, ax=ax, fraction=0.05, pad=0.03)
    return _svg(fig)


def curves(report: Report, task: str) -> str:
    """Accuracy vs length per language (and over all languages), the reference beside each candidate."""
    plt = _pyplot()
    cells = [t for c in report.candidates for t in c.tests if t.level == "cell" and t.signal == "accuracy" and t.task == task
             and t.reference is not None]
    buckets = _buckets(t.bucket for t in cells)
    languages = [x for x in languages_of(report) if any(t.language == x for t in cells)]
    panels = languages + (["all"] if len(languages) > 1 else [])
    fig, axes = plt.subplots(1, len(panels), figsize=(3.2 * len(panels), 2.8), sharey=True, squeeze=False)
    for ax, language in zip(axes[0], panels):
        mine = [t for t in cells if language == "all" or t.language == language]

        def mean(values):
            return sum(values) / len(values) if values else float("nan")

        # The reference per engine setup (candidates on another engine meet the reference run on that engine).
        setups = list(dict.fromkeys(_setup(t) for t in mine))
        for k, setup in enumerate(setups):
            ref = [mean([t.reference for t in mine if t.bucket == b and _setup(t) == setup]) for b in buckets]
            ax.plot(buckets, ref, color="black", linestyle=("--", ":", "-.")[k % 3], marker="o", zorder=5,
                    label="reference" + (f" ({setup})" if len(setups) > 1 else ""))
        for candidate in report.candidates:
            values = [mean([t.candidate for t in mine if t.bucket == b and t.checkpoint == candidate.name
                            and t.candidate is not None]) for b in buckets]
            ax.plot(buckets, values, marker="o", label=candidate.name)
        ax.set_title(language if language != "all" else "all languages", fontsize=10)
        ax.set_xlabel("bucket (tokens)")
        ax.set_ylim(-5, 105)
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("accuracy (%)")
    axes[0][-1].legend(fontsize=8, loc="best")
    fig.suptitle(f"{task}: accuracy vs input length", fontsize=11, y=1.04)
    return _svg(fig)


def _setup(test) -> str:
    """The engine setup of the baseline a test met (its folder's name: e.g. hf-cpu-float32)."""
    from pathlib import Path

    return Path(test.baseline_file).parent.name if test.baseline_file else ""


def tradeoff(report: Report) -> str | None:
    """Average accuracy drop vs weight memory saved, one point per candidate (None: nothing measured)."""
    points = [(c.name, c.efficiency.weights_saved, c.average_delta, c.verdict) for c in report.candidates
              if c.efficiency and c.efficiency.weights_saved is not None and c.average_delta is not None]
    if not points:
        return None
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5.5, 3.6))
    for name, saved, delta, verdict in points:
        ax.scatter([saved], [delta], s=60, color="tab:red" if verdict == "fail" else "tab:green", zorder=3)
        ax.annotate(name, (saved, delta), textcoords="offset points", xytext=(6, 4), fontsize=9)
    ax.axhline(0, color="black", linewidth=0.8)
    ax.set_xlabel("weight memory saved vs the reference (%)")
    ax.set_ylabel("average accuracy delta (points)")
    ax.set_title("what it saves vs what it costs (red: fails the gate)", fontsize=10)
    ax.grid(alpha=0.3)
    return _svg(fig)

