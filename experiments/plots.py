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


def iteration_ticks(last_step: int) -> list[int]:
    """0, then 1, 2, 5 times each power of ten up to ``last_step``, and ``last_step`` itself:
    labelled ticks at every scale, from a 6-step smoke run to 300,000 steps."""
    ticks, decade = [0], 1
    while decade <= max(last_step, 1):
        ticks += [m * decade for m in (1, 2, 5) if m * decade <= last_step]
        decade *= 10
    if last_step > 0 and ticks[-1] != last_step:
        if last_step < 1.3 * ticks[-1]:  # too close to read both: the end wins
            ticks.pop()
        ticks.append(last_step)
    return ticks


def iteration_axis(axis, last_step: int) -> None:
    """A symlog x axis (0 and 1, 10, 100, ... equally readable) ticked by
    ``iteration_ticks``, labelled as plain numbers."""
    axis.set_xscale("symlog", linthresh=1)
    ticks = iteration_ticks(last_step)
    axis.set_xticks(ticks, [f"{t:,}" for t in ticks], fontsize=7)
    axis.minorticks_off()
    axis.set_xlabel("training iteration")


BAND = "band: 95 % t-interval of the mean over seeds"


def band(axis, xs, stats, color, label=None, style="o-", alpha=0.18, low=None, high=None) -> None:
    """Per-x means as a line and their 95 % intervals (``interval`` dicts; undefined ones,
    one seed, are left out) as a shaded band, clipped to the possible range [low, high]
    (counts: low=0), so that no band shows an impossible value."""
    axis.plot(xs, [s["mean"] for s in stats], style, ms=3, color=color, label=label)
    defined = [(x, s["ci95"]) for x, s in zip(xs, stats, strict=True) if s["ci95"] is not None]
    if defined:

        def clip(value):
            value = value if low is None else max(low, value)
            return value if high is None else min(high, value)

        axis.fill_between(
            [x for x, _ in defined],
            [clip(ci[0]) for _, ci in defined],
            [clip(ci[1]) for _, ci in defined],
            color=color,
            alpha=alpha,
            linewidth=0,
        )


def verdicts_sentence(claims: list[dict]) -> str:
    """What the claims computed from these data say, for a caption: 'claim: verdict'."""
    if not claims:
        return ""
    parts = [f"{c['claim']}: {c['verdict']} ({len(c['seeds'])} seeds)" for c in claims]
    return " Computed verdicts: " + "; ".join(parts) + "."


def provenance_line(provenance: dict | None) -> str:
    """What produced a figure, in one line: the command, the commit (marked when the
    checkout had changes), the CPU, the devices and the XLA CPU instruction set."""
    found = provenance or {}
    machine = found.get("machine") or {}
    commit = found.get("git_commit")
    parts = [
        found.get("command") or "command not recorded",
        f"commit {commit[:10]}{' with uncommitted changes' if found.get('git_dirty') else ''}"
        if commit
        else "commit unknown",
        ", ".join(
            str(x)
            for x in (
                machine.get("cpu_model"),
                f"{machine['cpus']} CPUs" if machine.get("cpus") else None,
                "devices " + "/".join(machine["devices"]) if machine.get("devices") else None,
                f"XLA CPU ISA {machine['xla_cpu_max_isa']}"
                if machine.get("xla_cpu_max_isa")
                else None,
            )
            if x
        ),
    ]
    return " | ".join(part for part in parts if part)


def save_figure(figure, path, provenance: dict | None, dpi: int = 100) -> None:
    """Saves ``figure`` with its provenance line along its bottom edge, and closes it."""
    import matplotlib.pyplot as plt

    figure.subplots_adjust(bottom=max(figure.subplotpars.bottom, 0.14))
    figure.text(0.005, 0.005, provenance_line(provenance), fontsize=6, color="#555")
    figure.savefig(path, dpi=dpi)
    plt.close(figure)


def figure_html(src: str, caption: str) -> str:
    """An image with its one-line caption."""
    return (
        f'<figure><img src="{html.escape(src)}" alt="{html.escape(caption)}">'
        f"<figcaption>{html.escape(caption)}</figcaption></figure>"
    )
