"""Timelines: pictures of what happened.

A ``Story`` is a list of ``Step``s — which actor did what, and the page's
state right after (PTE write bit, folio dirty, pinned, disk content, the
file system's notifications, ...).  ``plot_stories`` draws stories as
swim-lane grids, one panel per story: a lane per actor (the step's label in
the lane of whoever acted), then a lane per state field (each cell the value
that step left; a change is outlined).  ``plot_interleaving`` draws a
scheduled race (``Interleaving.trace``): a lane per CPU, one box per
scheduling step named by the race window the CPU resumed from.

SVG, PNG or PDF by the file's suffix, through matplotlib: ``pip install
'pygup[plot]'`` (the test extra has it too); without it, ``require_matplotlib``
says which extra to install.
"""
from __future__ import annotations

import dataclasses
import os
import textwrap
from typing import Any, Iterable, Optional, Sequence

__all__ = ["Step", "Story", "plot_stories", "plot_interleaving", "require_matplotlib",
           "PlotUnavailable"]

FORMATS = (".svg", ".png", ".pdf")


class PlotUnavailable(RuntimeError):
    """matplotlib is not installed."""


@dataclasses.dataclass
class Step:
    actor: str
    label: str
    state: dict[str, Any]


@dataclasses.dataclass
class Story:
    title: str
    steps: list[Step] = dataclasses.field(default_factory=list)
    outcome: str = ""

    def add(self, actor: str, label: str, **state: Any) -> None:
        self.steps.append(Step(actor, label, state))

    def to_json(self) -> dict:
        return {"title": self.title, "outcome": self.outcome,
                "steps": [dataclasses.asdict(s) for s in self.steps]}


def require_matplotlib():
    """matplotlib.pyplot on the non-interactive Agg backend, or a
    PlotUnavailable naming the extra that brings it."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise PlotUnavailable("plotting needs matplotlib: pip install 'pygup[plot]'") from None
    return plt


def check_plot_path(path: str) -> None:
    """A ValueError for a path whose suffix no writer handles (checked
    before any work)."""
    if os.path.splitext(path)[1].lower() not in FORMATS:
        raise ValueError(f"plot path must end in one of {', '.join(FORMATS)}, got {path!r}")


def _fmt(value: Any) -> str:
    if isinstance(value, bool):
        return "yes" if value else "no"
    if value is None:
        return "-"
    return str(value)


_ACTOR_COLOURS = ["#4e79a7", "#f28e2b", "#59a14f", "#b07aa1", "#76b7b2", "#edc948",
                  "#9c755f", "#e15759"]


def plot_stories(stories: Sequence[Story], path: str) -> str:
    """Draw each story as a panel of lanes; write ``path``; return it."""
    check_plot_path(path)
    plt = require_matplotlib()
    from matplotlib.patches import Rectangle
    if not stories:
        raise ValueError("no stories to plot")
    ncols = max(len(s.steps) for s in stories)
    layouts = []
    for s in stories:
        actors = list(dict.fromkeys(st.actor for st in s.steps))
        fields = list(dict.fromkeys(k for st in s.steps for k in st.state))
        layouts.append((actors, fields))
    rows_total = sum(len(a) + len(f) + 2.2 for a, f in layouts)
    col_w, label_w, row_h = 2.3, 1.9, 0.52
    fig_w = label_w + ncols * col_w + 0.3
    fig_h = rows_total * row_h + 0.3
    fig = plt.figure(figsize=(fig_w, fig_h))
    top = 1.0
    all_actors = list(dict.fromkeys(a for acts, _ in layouts for a in acts))
    colour = {a: _ACTOR_COLOURS[i % len(_ACTOR_COLOURS)] for i, a in enumerate(all_actors)}
    for story, (actors, fields) in zip(stories, layouts):
        nrows = len(actors) + len(fields)
        h = (nrows + 2.2) * row_h / fig_h
        ax = fig.add_axes((0.0, top - h, 1.0, h))
        top -= h
        ax.set_xlim(-label_w, ncols * col_w)
        ax.set_ylim(nrows + 1.6, -0.9)
        ax.axis("off")
        ax.text(-label_w + 0.1, -0.45, story.title, fontsize=11, fontweight="bold",
                va="center", ha="left")
        for j in range(len(story.steps)):
            ax.text(j * col_w + col_w / 2, 0.15, f"step {j + 1}", fontsize=7.5,
                    ha="center", va="center", color="#555555")
        for i, actor in enumerate(actors):
            y = i + 0.5
            ax.text(-0.1, y + 0.5, actor, fontsize=8.5, ha="right", va="center",
                    fontweight="bold", color=colour[actor])
            ax.add_patch(Rectangle((0, y), ncols * col_w, 1, facecolor="#f4f4f4",
                                   edgecolor="none"))
            for j, st in enumerate(story.steps):
                if st.actor != actor:
                    continue
                ax.add_patch(Rectangle((j * col_w + 0.05, y + 0.06), col_w - 0.1, 0.88,
                                       facecolor=colour[actor], edgecolor="none", alpha=0.9))
                ax.text(j * col_w + col_w / 2, y + 0.5, "\n".join(textwrap.wrap(st.label, 28)),
                        fontsize=7.4, ha="center", va="center", color="white")
        base = len(actors) + 0.5
        ax.plot([-label_w + 0.1, ncols * col_w], [base + 0.02, base + 0.02], color="#999999",
                lw=0.6)
        for i, field in enumerate(fields):
            y = base + i + 0.1
            ax.text(-0.1, y + 0.45, field, fontsize=8.5, ha="right", va="center")
            prev = None
            for j, st in enumerate(story.steps):
                value = st.state.get(field)
                face = {True: "#c6e5b9", False: "#eeeeee"}.get(value, "#ffffff") \
                    if isinstance(value, bool) or value is None else "#ffffff"
                changed = j > 0 and value != prev
                ax.add_patch(Rectangle((j * col_w + 0.05, y + 0.05), col_w - 0.1, 0.8,
                                       facecolor=face,
                                       edgecolor="#d62728" if changed else "#cccccc",
                                       lw=1.4 if changed else 0.6))
                ax.text(j * col_w + col_w / 2, y + 0.45, _fmt(value), fontsize=8,
                        ha="center", va="center",
                        fontweight="bold" if changed else "normal")
                prev = value
        if story.outcome:
            ax.text(-label_w + 0.1, nrows + 1.15, story.outcome, fontsize=9, ha="left",
                    va="center", style="italic",
                    color="#d62728" if "LOST" in story.outcome.upper() else "#2c7a2c")
    fig.savefig(path)
    plt.close(fig)
    return path


def plot_interleaving(trace: Iterable, path: str, title: str = "",
                      cpu_names: Optional[Sequence[str]] = None,
                      reasons: Optional[dict[str, str]] = None,
                      outcome: str = "", states: Optional[Sequence[dict]] = None,
                      state_fields: Sequence[str] = ()) -> str:
    """A scheduled race: ``trace`` is ``Interleaving.trace`` ((cpu, point,
    spinning) per pick).  A lane per CPU; each pick a box in its CPU's lane
    named by the race window it resumed from (hatched while spinning);
    ``reasons`` (window -> why it is a window, from the registry) go in a
    legend under the lanes; ``states`` (one dict per pick) adds a row per
    ``state_fields`` name: what that step saw."""
    check_plot_path(path)
    plt = require_matplotlib()
    from matplotlib.patches import Rectangle
    picks = [tuple(t) + (False,) * (3 - len(tuple(t))) for t in trace]
    cpus = sorted({p[0] for p in picks}) or [0]
    names = list(cpu_names) if cpu_names else [f"CPU {c}" for c in cpus]
    col_w, label_w, row_h = 1.7, 1.6, 0.7
    used = list(dict.fromkeys(str(p[1]) for p in picks if p[1]))
    legend = [f"{w}: {reasons[w]}" for w in used if reasons and w in reasons]
    fig_w = min(label_w + max(len(picks), 1) * col_w + 0.4, 60)
    fig_h = (len(cpus) + len(state_fields if states else ()) + 1.6) * row_h \
        + 0.22 * len(legend) + 0.4
    fig, ax = plt.subplots(figsize=(fig_w, fig_h))
    ax.set_xlim(-label_w, max(len(picks), 1) * col_w)
    below = len(cpus) + (len(state_fields) if states else 0)
    ax.set_ylim(below + 1.2 + 0.32 * len(legend), -0.9)
    ax.axis("off")
    if title:
        ax.text(-label_w + 0.05, -0.5, title, fontsize=11, fontweight="bold", va="center")
    lane = {c: i for i, c in enumerate(cpus)}
    fields = list(state_fields) if states else []
    nrows = len(cpus) + len(fields)
    for k, name in enumerate(fields):
        ax.text(-0.1, len(cpus) + k + 0.5, name, ha="right", va="center", fontsize=8.5)
    for c in cpus:
        ax.text(-0.1, lane[c] + 0.5, names[lane[c]] if lane[c] < len(names) else f"CPU {c}",
                ha="right", va="center", fontsize=9, fontweight="bold",
                color=_ACTOR_COLOURS[lane[c] % len(_ACTOR_COLOURS)])
        ax.add_patch(Rectangle((0, lane[c] + 0.05), len(picks) * col_w, 0.9,
                               facecolor="#f4f4f4", edgecolor="none"))
    for j, (cpu, point, spinning) in enumerate(picks):
        y = lane.get(cpu, 0)
        ax.add_patch(Rectangle((j * col_w + 0.05, y + 0.12), col_w - 0.1, 0.76,
                               facecolor=_ACTOR_COLOURS[y % len(_ACTOR_COLOURS)],
                               alpha=0.85, hatch="//" if spinning else None, edgecolor="white"))
        label = str(point) if point else "start"
        ax.text(j * col_w + col_w / 2, y + 0.5, "\n".join(textwrap.wrap(label, 16)),
                fontsize=6.8, ha="center", va="center", color="white")
        for k, name in enumerate(fields):
            seen = states[j] if j < len(states) else {}
            value = seen.get(name)
            prev = states[j - 1].get(name) if 0 < j <= len(states) else value
            ax.add_patch(Rectangle((j * col_w + 0.05, len(cpus) + k + 0.1), col_w - 0.1, 0.8,
                                   facecolor="white",
                                   edgecolor="#d62728" if value != prev else "#cccccc",
                                   lw=1.4 if value != prev else 0.6))
            text = f"{value:#x}" if isinstance(value, int) and name in ("pte", "pfn") \
                else _fmt(value)
            ax.text(j * col_w + col_w / 2, len(cpus) + k + 0.5, text, fontsize=7,
                    ha="center", va="center")
        ax.text(j * col_w + col_w / 2, nrows + 0.2, str(j + 1), fontsize=7,
                ha="center", color="#555555")
    if outcome:
        ax.text(-label_w + 0.05, nrows + 0.65, outcome, fontsize=9, va="center",
                style="italic",
                color="#d62728" if ("VIOLATION" in outcome or "FAIL" in outcome) else "#2c7a2c")
    for k, text in enumerate(legend):
        ax.text(-label_w + 0.05, nrows + 1.05 + 0.32 * k, text, fontsize=7.5, va="center")
    fig.savefig(path, bbox_inches="tight")
    plt.close(fig)
    return path
