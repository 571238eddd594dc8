"""A MkDocs hook: the studies' figures, served from where they are committed.

The results pages (docs/results/<folder>.md, written by ``python -m experiments.report_docs``)
show ``<folder>/<figure>.png``; this hook adds each ``experiments/results/<folder>/*.png`` to
the site at ``results/<folder>/``, so the figures are not copied into docs/.
"""

from pathlib import Path

from mkdocs.structure.files import File

ROOT = Path(__file__).resolve().parents[2]
RESULTS = ROOT / "experiments" / "results"


def on_files(files, config):
    for png in sorted(RESULTS.glob("*/*.png")):
        files.append(
            File(
                png.relative_to(RESULTS.parent).as_posix(),  # results/<folder>/<name>.png
                src_dir=str(RESULTS.parent),
                dest_dir=config["site_dir"],
                use_directory_urls=config["use_directory_urls"],
            )
        )
    return files
