"""Rasterising the synthetic world in NumPy: shape masks, colour, material and texture fills.

Everything works on a window of pixel-centre coordinates, so a part costs only its bounding
box. Randomness always comes from the caller's ``numpy.random.Generator``.
"""

from __future__ import annotations

import numpy as np

from jaxdissect.data.synthetic.concepts import COLORS

COLOR_NAMES = tuple(COLORS)
COLOR_TABLE = np.array([COLORS[name] for name in COLOR_NAMES], np.float32)

MATERIAL_COLORS = {  # base colour tendencies per material
    "wood": ("brown", "orange"),
    "metal": ("grey", "white"),
    "fabric": COLOR_NAMES,
    "stone": ("grey", "brown", "white"),
    "glass": ("blue", "white"),
    "grass": ("green",),
    "water": ("blue",),
    "brick": ("red", "brown", "orange"),
    "sand": ("yellow", "white"),
    "asphalt": ("black", "grey"),
    "tile": ("white", "grey", "blue"),
    "snow": ("white",),
}


def jitter_color(rng: np.random.Generator, name: str, amount: float = 0.07) -> np.ndarray:
    """A colour prototype with a small random shift (still nearest to its own name mostly)."""
    return np.clip(COLORS[name] + rng.normal(0, amount, 3), 0, 1).astype(np.float32)


def choose_color(rng: np.random.Generator, preferred: tuple[str, ...]) -> str:
    """Half the time a preferred colour; otherwise any of the 11 (identity is not colour)."""
    if preferred and rng.random() < 0.5:
        return preferred[rng.integers(len(preferred))]
    return COLOR_NAMES[rng.integers(len(COLOR_NAMES))]


def smooth_noise(rng: np.random.Generator, height: int, width: int, cells: int) -> np.ndarray:
    """Low-frequency noise in [-1, 1]: a random ``cells`` grid, bilinearly enlarged."""
    grid = rng.uniform(-1, 1, (cells + 1, cells + 1)).astype(np.float32)
    ys = np.linspace(0, cells, height, dtype=np.float32)
    xs = np.linspace(0, cells, width, dtype=np.float32)
    y0 = np.minimum(ys.astype(int), cells - 1)
    x0 = np.minimum(xs.astype(int), cells - 1)
    wy = (ys - y0)[:, None]
    wx = (xs - x0)[None, :]
    top = grid[y0][:, x0] * (1 - wx) + grid[y0][:, x0 + 1] * wx
    bottom = grid[y0 + 1][:, x0] * (1 - wx) + grid[y0 + 1][:, x0 + 1] * wx
    return top * (1 - wy) + bottom * wy


def shape_mask(shape: str, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Boolean mask of a shape filling the unit box, at box coordinates u (x) and v (y)."""
    inside = (u >= 0) & (u <= 1) & (v >= 0) & (v <= 1)
    if shape == "rect":
        return inside
    if shape == "ellipse":
        return (u - 0.5) ** 2 + (v - 0.5) ** 2 <= 0.25
    if shape == "triangle":  # apex at the top centre
        return inside & (np.abs(u - 0.5) <= 0.5 * v)
    if shape == "triangle_down":
        return inside & (np.abs(u - 0.5) <= 0.5 * (1 - v))
    if shape == "diamond":
        return np.abs(u - 0.5) + np.abs(v - 0.5) <= 0.5
    if shape == "trapezoid":  # narrower at the top
        return inside & (np.abs(u - 0.5) <= 0.3 + 0.2 * v)
    raise ValueError(f"unknown shape {shape!r}")


def material_fill(rng: np.random.Generator, material: str, height: int, width: int) -> np.ndarray:
    """(height, width, 3) float32 pixels of a material: its colours and its pattern."""
    choices = MATERIAL_COLORS[material]
    base = jitter_color(rng, choices[rng.integers(len(choices))], 0.05)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    noise = smooth_noise(rng, height, width, 3)
    if material == "wood":
        grain = np.sin(yy * rng.uniform(0.8, 1.6) + 3 * noise)
        shade = 0.75 + 0.25 * grain
    elif material == "metal":
        shade = 0.8 + 0.25 * (xx / max(width - 1, 1)) + 0.12 * (np.abs(xx - width * 0.6) < 1.5)
    elif material == "fabric":
        shade = 0.85 + 0.15 * ((xx.astype(int) + yy.astype(int)) % 2)
    elif material == "stone":
        shade = 0.75 + 0.25 * noise + 0.1 * smooth_noise(rng, height, width, 7)
    elif material == "glass":
        shade = 0.9 + 0.25 * (((xx + yy) % 7) < 1.5)
    elif material == "grass":
        shade = 0.7 + 0.3 * rng.random((1, width), np.float32) * (
            0.6 + 0.4 * rng.random((height, 1))
        )
    elif material == "water":
        shade = 0.8 + 0.2 * np.sin(yy * 1.3 + 2 * np.sin(xx * 0.4) + noise)
    elif material == "brick":
        row = (yy // 3).astype(int)
        mortar = ((yy % 3) < 0.7) | (((xx + 3 * (row % 2)) % 6) < 0.7)
        shade = np.where(mortar, 1.35, 0.85 + 0.1 * noise)
    elif material == "sand":
        shade = 0.9 + 0.1 * rng.random((height, width), np.float32)
    elif material == "asphalt":
        shade = 0.8 + 0.25 * rng.random((height, width), np.float32)
    elif material == "tile":
        shade = np.where(((xx % 5) < 0.8) | ((yy % 5) < 0.8), 0.6, 1.0)
    elif material == "snow":
        shade = 0.95 + 0.05 * noise
    else:
        raise ValueError(f"unknown material {material!r}")
    return np.clip(base * shade[..., None], 0, 1).astype(np.float32)


def flat_fill(rng: np.random.Generator, color: str, height: int, width: int) -> np.ndarray:
    """A colour with gentle shading, so flat parts are not perfectly uniform."""
    base = jitter_color(rng, color)
    shade = 1.0 + 0.08 * smooth_noise(rng, height, width, 2)
    return np.clip(base * shade[..., None], 0, 1).astype(np.float32)


def texture_fill(rng: np.random.Generator, texture: str, height: int, width: int) -> np.ndarray:
    """A whole-image texture (as in DTD) in two random colours."""
    first, second = rng.choice(len(COLOR_NAMES), 2, replace=False)
    a = jitter_color(rng, COLOR_NAMES[first])
    b = jitter_color(rng, COLOR_NAMES[second])
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    angle = rng.uniform(0, np.pi)
    along = xx * np.cos(angle) + yy * np.sin(angle)
    across = -xx * np.sin(angle) + yy * np.cos(angle)
    period = rng.uniform(4, 10) * height / 64
    if texture == "striped":
        pattern = np.sin(2 * np.pi * along / period) > 0
    elif texture == "banded":
        pattern = np.sin(2 * np.pi * along / (3 * period)) > 0.6
    elif texture == "dotted":
        cu, cv = (along % period) - period / 2, (across % period) - period / 2
        pattern = cu**2 + cv**2 < (period * 0.28) ** 2
    elif texture == "checkered":
        pattern = ((along // period) + (across // period)) % 2 == 0
    elif texture == "zigzagged":
        wave = np.abs((across % period) - period / 2) * 2
        pattern = ((along + wave) % period) < period / 2
    elif texture == "grid":
        pattern = ((along % period) < 1.2) | ((across % period) < 1.2)
    elif texture == "wavy":
        pattern = (
            np.sin(2 * np.pi * (along + 0.4 * period * np.sin(across / period * 2)) / period) > 0
        )
    elif texture == "crosshatched":
        d1, d2 = (xx + yy) % period, (xx - yy) % period
        pattern = (d1 < 1.2) | (d2 < 1.2)
    elif texture == "marbled":
        turbulence = smooth_noise(rng, height, width, 4) + 0.5 * smooth_noise(rng, height, width, 8)
        pattern = np.sin(along / period * 2 + 4 * turbulence) > 0.3
    elif texture == "spiralled":
        cy, cx = rng.uniform(0.3, 0.7, 2) * (height, width)
        radius = np.hypot(yy - cy, xx - cx)
        theta = np.arctan2(yy - cy, xx - cx)
        pattern = np.sin(theta * 2 + radius * 2 * np.pi / period) > 0
    else:
        raise ValueError(f"unknown texture {texture!r}")
    return np.where(pattern[..., None], a, b).astype(np.float32)


def nearest_color(pixels: np.ndarray) -> np.ndarray:
    """Index (into COLOR_NAMES) of the nearest colour prototype of each (..., 3) pixel."""
    distance = ((pixels[..., None, :] - COLOR_TABLE) ** 2).sum(-1)
    return np.argmin(distance, axis=-1)
