"""Plot helpers the studies share: a mean with its 95 % band across seeds, a training
iteration axis with readable ticks, and a figure with its one-line caption."""

from __future__ import annotations

import html


def pyplot():
    """matplotlib.pyplot on the file-only Agg backend (imported late: `import jaxdissect`
    and the studies' configs stay light)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def iteration_axis(axis, last_step: int) -> None:
    """A symlog x axis (0 and 1, 10, 100, ... equally readable) ticked at 0 and the powers of
    ten up to ``last_step``, labelled as plain numbers."""
    axis.set_xscale("symlog", linthresh=1)
    ticks = [0]
    while ticks[-1] * 10 <= max(last_step, 1) or ticks[-1] == 0:
        ticks.append(1 if ticks[-1] == 0 else ticks[-1] * 10)
    axis.set_xticks(ticks, [f"{t:,}" for t in ticks])
    axis.minorticks_off()
    axis.set_xlabel("training iteration")


def band(axis, xs, stats, color, label=None, style="o-", alpha=0.18) -> None:
    """Per-x means as a line and their 95 % intervals (``interval`` dicts; undefined ones,
    one seed, are left out) as a shaded band."""
    axis.plot(xs, [s["mean"] for s in stats], style, ms=3, color=color, label=label)
    defined = [(x, s["ci95"]) for x, s in zip(xs, stats, strict=True) if s["ci95"] is not None]
    if defined:
        axis.fill_between(
            [x for x, _ in defined],
            [ci[0] for _, ci in defined],
            [ci[1] for _, ci in defined],
            color=color,
            alpha=alpha,
            linewidth=0,
        )


def figure_html(src: str, caption: str) -> str:
    """An image with its one-line caption."""
    return (
        f'<figure><img src="{html.escape(src)}" alt="{html.escape(caption)}">'
        f"<figcaption>{html.escape(caption)}</figcaption></figure>"
    )
