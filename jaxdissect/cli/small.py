"""The commands that are a call and a print: ``features``, ``summarize``, ``synthetic``,
``demo``, ``fetch`` and ``precompile``."""

from __future__ import annotations

import argparse
import os

import numpy as np

from jaxdissect.errors import DissectError


def run_features(args: argparse.Namespace) -> int:
    from jaxdissect.report.results import atomic_path, check_output_file
    from jaxdissect.sources import load_model, open_features

    if args.out.exists() and args.images.exists() and os.path.samefile(args.out, args.images):
        raise DissectError(
            f"--out {args.out} is the input --images {args.images} (the same file, or a link "
            "to it): choose another --out; nothing written"
        )
    if args.out.is_dir():
        raise DissectError(f"--out {args.out}: is a folder; name the .npy file to write")
    check_output_file(args.out, "--out")  # before the model runs
    images = open_features(args.images)
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] != 3:
        raise DissectError(
            f"--images {args.images}: expected uint8 RGB images of shape (N, H, W, 3), got "
            f"{images.dtype} {images.shape}"
        )
    if len(images) == 0:
        raise DissectError(f"--images {args.images}: holds no images (shape {images.shape})")
    model = load_model(args.model, args.weights)
    layers = model.check_layers([args.layer])
    batches = []
    for start in range(0, len(images), args.batch_size):
        batch = np.asarray(images[start : start + args.batch_size])
        batches.append(np.asarray(model.apply(batch, layers)[args.layer]))
    output = np.concatenate(batches)
    if output.dtype.kind == "f" and not np.isfinite(output).all():
        bad = int(np.flatnonzero((~np.isfinite(output.reshape(len(output), -1))).any(1))[0])
        raise DissectError(
            f"{args.model} layer {args.layer}: NaN or inf activations (first in image {bad}); "
            "nothing written"
        )
    with atomic_path(args.out) as temporary:
        with open(temporary, "wb") as f:
            np.save(f, output)
    print(f"wrote {args.out}: {args.layer} activations of shape {output.shape}")
    return 0


def run_summarize(args: argparse.Namespace) -> int:
    import json

    from jaxdissect.report.results import format_summary, summarize_tally_csv

    summary = summarize_tally_csv(args.tally, args.iou_threshold)
    print(json.dumps(summary, indent=1) if args.json else format_summary(summary))
    return 0


def run_fetch(args: argparse.Namespace) -> int:
    from jaxdissect.data.fetch import MANIFEST, fetch

    fetched = fetch(
        args.name,
        args.dir,
        url=args.url,
        from_file=args.from_file,
        keep_archive=args.keep_archive,
        retries=args.retries,
        progress=not args.no_progress,
    )
    if fetched.already:
        print(f"{fetched.path}: already there")
        return 0
    print(f"{args.name}: {fetched.path} ({fetched.seconds:.1f} s)")
    if fetched.recorded:
        print(
            f"SHA-256 {fetched.sha256} recorded in {args.dir / MANIFEST}: later fetches must match"
        )
    return 0


def run_precompile(args: argparse.Namespace) -> int:
    from jaxdissect.precompile import main as precompile_main

    precompile_main()
    return 0


def run_demo(args: argparse.Namespace) -> int:
    from jaxdissect.demo import run

    run(args.out, args.images, args.seed, progress=not args.no_progress)
    return 0


def _world_config(args: argparse.Namespace):
    from jaxdissect.data.synthetic.world import WorldConfig

    try:
        return WorldConfig(image_size=args.size, label_size=getattr(args, "label_size", None))
    except DissectError as error:  # spelt with this command's flags
        raise DissectError(error.for_cli({"image_size": "--size"})) from None


def _refuse_probe_names(out) -> None:
    """Refuses an --out holding a name a probe set writes (a user's category.csv was
    overwritten): nothing proves it ours, even after an interrupted write."""
    import os

    from jaxdissect.data.synthetic.world import CATEGORIES

    if os.path.lexists(out) and not out.is_dir():  # else mkdir's "OUT/images: Not a directory"
        raise DissectError(f"--out {out}: exists and is not a folder")
    names = ["category.csv", "label.csv", *(f"c_{c}.csv" for c in CATEGORIES), "images"]
    taken = [name for name in names if os.path.lexists(out / name)]
    if taken:
        raise DissectError(
            f"--out {out}: already holds {', '.join(taken)}, which a probe set writes "
            "(yours, or an interrupted write's): choose another --out, or remove them"
        )


def run_synthetic(args: argparse.Namespace) -> int:
    config = _world_config(args)
    if args.synthetic_command == "probe":
        from jaxdissect.data.synthetic.world import write_probe

        if (args.out / "index.csv").exists():
            raise DissectError(
                f"{args.out}: already holds a probe set (index.csv); choose another --out"
            )
        _refuse_probe_names(args.out)
        try:
            write_probe(args.out, args.images, args.seed, config, progress=not args.no_progress)
        except DissectError as error:  # spelt with this command's flags
            flags = {"image_size": "--size", "num_images": "--images", "directory": "--out"}
            raise DissectError(error.for_cli(flags)) from None
        print(f"wrote a Broden-format probe set of {args.images} images to {args.out}")
    else:
        from jaxdissect.data.synthetic.figure import MAX_ROWS, save_world_figure

        if args.rows > MAX_ROWS:
            raise DissectError(f"--rows {args.rows}: at most {MAX_ROWS} rows fit one figure")
        try:
            written = save_world_figure(args.out, args.seed, args.rows, config)
        except DissectError as error:  # spelt with this command's flags
            raise DissectError(error.for_cli({"image_size": "--size", "path": "--out"})) from None
        print(f"wrote {written}")
    return 0
