"""A picture of the synthetic world: images beside their object, part and material labels."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from jaxdissect.config import check_paths
from jaxdissect.data.synthetic import world
from jaxdissect.errors import DissectError


def _overlay(pixels: np.ndarray, plane: np.ndarray, palette: np.ndarray) -> np.ndarray:
    """Label colours over a faded image (unlabelled pixels stay faded grey)."""
    stride = pixels.shape[0] // plane.shape[0]
    labels = np.kron(plane, np.ones((stride, stride), plane.dtype))
    faded = pixels.astype(np.float32) / 255 * 0.35 + 0.4
    colored = palette[labels % len(palette)]
    return np.where((labels > 0)[..., None], colored, faded)


# Each row is 3 inches tall: beyond this many, the figure exceeds what Matplotlib draws
# (2**16 pixels a side) after minutes of drawing.
MAX_ROWS = 100

# The most image pixels one figure draws (rows x image_size**2): each becomes three float
# overlays held by Matplotlib until the figure is saved (100 rows of 8192 px reached 6 GB).
# A panel is about 270 px wide on the page, so larger images add nothing to see.
MAX_FIGURE_PIXELS = 2**24


def figure_path(path: str | Path) -> tuple[Path, str]:
    """The file a figure for ``path`` is written to, and its format: ``path`` itself when
    its extension is one Matplotlib writes, ``path`` + ``.png`` when it has none.

    Raises:
      DissectError: naming ``path`` and the extensions Matplotlib writes.
    """
    from matplotlib.backend_bases import FigureCanvasBase

    supported = sorted(FigureCanvasBase.get_supported_filetypes())
    # The extension as Matplotlib reads it ("fig." ends in an empty one).
    extension = os.path.splitext(str(path))[1]
    if not extension:
        return Path(f"{path}.png"), "png"
    if extension[1:].lower() not in supported:
        raise DissectError(
            f"{path}: cannot write a figure as {extension!r}; use one of "
            f"{', '.join('.' + name for name in supported)} (or no extension for .png)"
        )
    return Path(path), extension[1:].lower()


def save_world_figure(
    path: str | Path, seed: int = 0, rows: int = 6, config: world.WorldConfig | None = None
) -> Path:
    """Saves a grid: per probe image, the image and its object, part and material labels,
    each label region named at its centre. Returns the file written (see ``figure_path``)."""
    import matplotlib

    from jaxdissect.report.results import atomic_path, check_output_file

    check_paths(path=path)
    if not 1 <= rows <= MAX_ROWS:
        raise DissectError(f"`rows` must lie in [1, {MAX_ROWS}], got {rows!r}", arguments=("rows",))
    config = config or world.WorldConfig()
    if rows * config.image_size**2 > MAX_FIGURE_PIXELS:
        raise DissectError(
            f"`rows` {rows} x `image_size` {config.image_size}**2 is "
            f"{rows * config.image_size**2:,} pixels; a figure draws at most "
            f"{MAX_FIGURE_PIXELS:,} (fewer rows or smaller images)",
            arguments=("rows", "image_size"),
        )
    path, file_format = figure_path(path)
    check_output_file(path, "`path`", ("path",))
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    vocab = world.vocabulary()
    palette = np.random.default_rng(7).uniform(0.1, 1.0, (len(vocab.label_names), 3))
    samples, index = [], 0
    while len(samples) < rows:  # scene images only: textures carry no pixel labels
        sample = world.draw(seed, "probe", index, config)
        index += 1
        if sample.scene:
            samples.append(sample)
    columns = ("image", "object", "part", "material")
    figure, axes = plt.subplots(rows, 4, figsize=(12, 3 * rows), squeeze=False)
    for row, sample in enumerate(samples):
        for col, name in enumerate(columns):
            axis = axes[row, col]
            axis.set_xticks([])
            axis.set_yticks([])
            if name == "image":
                axis.imshow(sample.pixels, interpolation="nearest")
                axis.set_title(vocab.label_names[sample.scene], fontsize=10)
                continue
            plane = sample.planes[name]
            axis.imshow(_overlay(sample.pixels, plane, palette), interpolation="nearest")
            axis.set_title(name, fontsize=10)
            stride = config.image_size / plane.shape[0]
            for label in np.unique(plane[plane > 0]):
                ys, xs = np.nonzero(plane == label)
                if ys.size < 3:
                    continue
                axis.text(
                    (xs.mean() + 0.5) * stride,
                    (ys.mean() + 0.5) * stride,
                    vocab.label_names[label],
                    fontsize=6.5,
                    ha="center",
                    va="center",
                    bbox={"facecolor": "white", "alpha": 0.7, "pad": 0.5, "linewidth": 0},
                )
    figure.tight_layout()
    # Written beside and renamed: never through a link at ``path``, never half a file.
    with atomic_path(path) as temporary:
        figure.savefig(temporary, dpi=90, format=file_format)
    plt.close(figure)
    return path
