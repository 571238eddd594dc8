"""Statistics across seeds and the paper's claims as computed verdicts.

Every count a study reports is measured once per seed (a seed sets the initialisation, the
data order and the rotation; the probe set stays the same) and summarised as its per-seed
values, their mean and a 95 % t-interval for the mean (Student's t with n - 1 degrees of
freedom; undefined, None, with one seed). A claim compares two conditions seed by seed:
the interval of the paired differences decides its verdict.
"""

from __future__ import annotations

import html
import math
import typing

REPLICATED, CONTRADICTED, INCONCLUSIVE = "replicated", "contradicted", "inconclusive"


def _t_within(t: float, dof: int) -> float:
    """P(|T| <= t) for Student's t with integer ``dof``: the closed finite series of
    Abramowitz & Stegun 26.7.3 (odd dof) and 26.7.4 (even dof)."""
    theta = math.atan(t / math.sqrt(dof))
    cos2 = math.cos(theta) ** 2
    if dof % 2:
        total, term = 0.0, math.cos(theta)
        for k in range(1, (dof - 1) // 2 + 1):
            total += term
            term *= cos2 * (2 * k) / (2 * k + 1)
        return 2 / math.pi * (theta + math.sin(theta) * total)
    total, term = 0.0, 1.0
    for k in range(1, dof // 2 + 1):
        total += term
        term *= cos2 * (2 * k - 1) / (2 * k)
    return math.sin(theta) * total


def t_quantile(dof: int, coverage: float = 0.95) -> float:
    """The t with P(|T| <= t) = ``coverage`` for Student's t with ``dof`` degrees of freedom
    (for coverage 0.95, the 0.975 quantile), by bisection on the exact distribution."""
    if dof < 1 or not 0 < coverage < 1:
        raise ValueError(f"t_quantile: need dof >= 1 and 0 < coverage < 1, got {dof}, {coverage}")
    low, high = 0.0, 1.0
    while _t_within(high, dof) < coverage:
        high *= 2
    for _ in range(200):
        middle = (low + high) / 2
        if _t_within(middle, dof) < coverage:
            low = middle
        else:
            high = middle
    return (low + high) / 2


def interval(values: typing.Sequence[float]) -> dict:
    """{"per_seed", "mean", "ci95"}: the values, their mean and the 95 % t-interval for the
    mean ([low, high]; None with fewer than two values)."""
    values = list(values)
    if not values:
        raise ValueError("interval: no values")
    n = len(values)
    mean = sum(values) / n
    ci95 = None
    if n > 1:
        sd = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))
        half = t_quantile(n - 1) * sd / math.sqrt(n)
        ci95 = [mean - half, mean + half]
    return {"per_seed": values, "mean": mean, "ci95": ci95}


def verdict(ci95: list[float] | None, paper_sign: int) -> str:
    """replicated: the interval lies strictly on the paper's side of 0 (``paper_sign`` +1:
    the paper finds the difference positive, -1: negative); contradicted: strictly on the
    other side; inconclusive: it contains 0 or is undefined."""
    if ci95 is None:
        return INCONCLUSIVE
    low, high = (paper_sign * ci95[0], paper_sign * ci95[1])
    low, high = min(low, high), max(low, high)
    if low > 0:
        return REPLICATED
    if high < 0:
        return CONTRADICTED
    return INCONCLUSIVE


def seeds_needed(values: typing.Sequence[float], limit: int = 10_000) -> int | None:
    """An estimate: the fewest seeds whose 95 % t-interval would exclude 0 if the paired
    differences kept the observed mean and standard deviation (a plain power calculation at
    the observed effect, no allowance for its own uncertainty). None: the mean is 0, there
    are fewer than two values, or more than ``limit`` seeds would be needed."""
    values = list(values)
    n = len(values)
    if n < 2:
        return None
    mean = sum(values) / n
    sd = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))
    if mean == 0:
        return None
    for seeds in range(2, limit + 1):
        if t_quantile(seeds - 1) * sd / math.sqrt(seeds) < abs(mean):
            return seeds
    return None


def claim(
    sentence: str,
    compares: tuple[str, str],
    first: typing.Sequence[float],
    second: typing.Sequence[float],
    seeds: typing.Sequence[int],
    paper_sign: int = 1,
) -> dict:
    """A paper claim tested seed by seed: ``first[i]`` and ``second[i]`` are the two
    conditions ``compares`` names, measured with seed ``seeds[i]``; the paper finds
    first - second of sign ``paper_sign``."""
    if not len(first) == len(second) == len(seeds):
        raise ValueError(
            f"claim {sentence!r}: {len(first)}, {len(second)} values, {len(seeds)} seeds"
        )
    paired = [a - b for a, b in zip(first, second, strict=True)]
    differences = interval(paired)
    decided = verdict(differences["ci95"], paper_sign)
    return {
        "claim": sentence,
        "compares": list(compares),
        "paper_sign": paper_sign,
        "seeds": list(seeds),
        "per_seed": [[a, b] for a, b in zip(first, second, strict=True)],
        "mean_difference": differences["mean"],
        "ci95": differences["ci95"],
        "verdict": decided,
        # Only where undecided: how many seeds the observed effect would need (an estimate).
        "seeds_needed": seeds_needed(paired) if decided == INCONCLUSIVE else None,
    }


def slope(xs: typing.Sequence[float], ys: typing.Sequence[float]) -> float:
    """The least-squares slope of ys against xs."""
    mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
    return sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / sum(
        (x - mx) ** 2 for x in xs
    )


def format_interval(mean: float, ci95: list[float] | None, digits: int = 2) -> str:
    """``mean [low, high]``, or ``mean [undefined: 1 seed]``."""
    if ci95 is None:
        return f"{mean:.{digits}f} [undefined: 1 seed]"
    return f"{mean:.{digits}f} [{ci95[0]:.{digits}f}, {ci95[1]:.{digits}f}]"


def _needed(claim: dict) -> str:
    """The seeds-needed cell: blank for a decided claim."""
    if claim["verdict"] != INCONCLUSIVE:
        return ""
    needed = claim.get("seeds_needed")
    if needed is not None:
        return f"about {needed}"
    return "no effect to detect" if claim["mean_difference"] == 0 else "more than 10,000"


def claims_html(claims: list[dict]) -> str:
    """The claims table every summary.html starts with."""
    rows = "".join(
        f"<tr><td>{html.escape(c['claim'])}</td>"
        f"<td>{html.escape(c['compares'][0])} &minus; {html.escape(c['compares'][1])}</td>"
        f"<td>{html.escape(format_interval(c['mean_difference'], c['ci95']))}</td>"
        f"<td>{len(c['seeds'])}</td><td class='{c['verdict']}'>{c['verdict']}</td>"
        f"<td>{_needed(c)}</td></tr>"
        for c in claims
    )
    return (
        "<h2>The paper's claims</h2><p>Mean over seeds of the paired difference, with its 95 % "
        "t-interval (n &minus; 1 degrees of freedom); replicated: the interval lies on the "
        "paper's side of 0, contradicted: on the other side, inconclusive: it contains 0 "
        "(or there is one seed). Seeds needed: for an inconclusive claim, an estimate of how "
        "many seeds the observed mean and spread would need for the interval to exclude 0.</p>"
        "<table><tr><th>claim</th><th>difference</th><th>mean difference [95 % interval]</th>"
        f"<th>seeds</th><th>verdict</th><th>seeds needed</th></tr>{rows}</table>"
    )
