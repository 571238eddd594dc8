"""``report``: a finished dissection's HTML pages drawn anew, published as a new set."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from jaxdissect.config import check_out_apart
from jaxdissect.errors import DissectError, one_line
from jaxdissect.outdir import STORE


def run_report(args: argparse.Namespace) -> int:
    from jaxdissect.data.broden import open_broden
    from jaxdissect.data.cache import load_image_array
    from jaxdissect.report.html import write_index
    from jaxdissect.report.schema import check_same_probe, read_results

    # A set folder in an OUT's store (not OUT/<layer>, a link into it): its files would be
    # displaced by a set of its own.
    layer_link = args.out.is_symlink() and os.readlink(args.out).startswith(f"{STORE}/")
    try:
        check_out_apart(None if layer_link else args.out, None)
    except DissectError as error:
        raise DissectError(str(error).replace("`out`", "OUT")) from None
    # A results.json that is not a regular file (a FIFO) is named by read_results.
    here = (args.out / "results.json").exists()
    folders = [args.out] if here else sorted(p.parent for p in args.out.glob("*/results.json"))
    if not folders:
        raise DissectError(f"{args.out}: no results.json here or in its subfolders")
    sets: dict[Path, list[str | None]] = {}
    for folder in folders:
        root, layer = _set_of(folder, args.out)
        sets.setdefault(root, []).append(layer)

    def images_for(folder: Path):
        results = read_results(folder)
        try:
            dataset = open_broden(results["dataset"], results["categories"])
            check_same_probe(results, dataset)
            return load_image_array(dataset, args.cache, progress=False)
        except DissectError as error:
            why = error.for_cli({"cache_root": "--cache"})
            print(
                one_line(f"jaxdissect: warning: drawing {folder}'s cards without images ({why})"),
                file=sys.stderr,
            )
            return None

    for root, layers in sets.items():
        for page in _republish_reports(root, layers, images_for):
            print(f"{'index' if page.name == 'index.html' else 'report'}: {page}")
    # Separate OUTs in one folder (not OUT/<layer>, which its OUT's index already lists).
    if args.out not in sets and all(f.parent == args.out for f in folders):
        print(f"index: {write_index(args.out, [f.name for f in folders])}")
    return 0


def _set_of(folder: Path, top: Path) -> tuple[Path, str | None]:
    """(the OUT whose set holds ``folder``'s results, the layer folder's name in it or None)."""

    if folder.is_symlink() and os.readlink(folder).startswith(f"{STORE}/"):
        return folder.parent, folder.name  # a layer of the parent's set
    if folder == top or (folder / ".lock").exists() or (folder / STORE).exists():
        return folder, None  # an OUT of its own
    return folder.parent, folder.name  # a layer folder an earlier version wrote


def _republish_reports(root: Path, layers: list[str | None], images_for) -> list[Path]:
    """Publishes OUT ``root``'s set anew with fresh reports of ``layers`` (None: OUT's one
    layer): its other files are carried over, by hard link where the system allows."""
    import shutil

    from jaxdissect.driver import FINGERPRINT, publish_set
    from jaxdissect.outdir import current_set, locked, set_files
    from jaxdissect.report.html import write_index, write_layer_report

    redrawn = {f"{layer}/" if layer else "" for layer in layers}
    with locked(root):
        current = current_set(root, "dissect")
        if current is not None:
            carried = [
                name
                for name in set_files(current)
                if name != "index.html"
                and not any(
                    name in (f"{prefix}report.html",) or name.startswith(f"{prefix}report/")
                    for prefix in redrawn
                )
            ]
            source = current
        else:  # plain files of an earlier version
            data = ("results.json", "tally.csv", "counts.npz", FINGERPRINT)
            carried = [
                f"{prefix}{name}"
                for prefix in sorted(redrawn)
                for name in data
                if (root / f"{prefix}{name}").is_file()
            ]
            source = root
        pages = []

        def write(folder: Path) -> None:
            for name in carried:
                target = folder / name
                target.parent.mkdir(parents=True, exist_ok=True)
                try:
                    os.link(source / name, target)
                except OSError:
                    shutil.copy2(source / name, target)
            for layer in layers:
                # The images are looked up from the user's folder (the same results.json),
                # so that a warning names it rather than the set being written.
                layer_folder, users_folder = (
                    (folder / layer, root / layer) if layer else (folder, root)
                )
                write_layer_report(layer_folder, images_for(users_folder))
                pages.append(users_folder / "report.html")
            named = sorted({name.split("/")[0] for name in carried if "/" in name})
            named = [n for n in named if (folder / n / "results.json").is_file()]
            if named and not (folder / "results.json").exists():
                write_index(folder, named)
                pages.append(root / "index.html")

        publish_set(root, "dissect", write)
    return pages
