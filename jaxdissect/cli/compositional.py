"""``formulas`` and ``directions``: explanations of a layer's units beyond single concepts,
in one process or under jax.distributed (every process computes, process 0 writes and
prints)."""

from __future__ import annotations

import argparse

import numpy as np

from jaxdissect.errors import DissectError


def run_formulas(args: argparse.Namespace) -> int:
    from jaxdissect.cli.dissect import refuse_weights_with_features, start_processes
    from jaxdissect.compositional.explain import explain
    from jaxdissect.sources import load_model

    refuse_weights_with_features(args)
    writer = start_processes(args)
    source = args.features if args.features is not None else load_model(args.model, args.weights)
    explanations = _run_on_layer(
        explain,
        args,
        source,
        writer,
        length=args.length,
        beam=args.beam,
        exact=args.exact,
        labels_per_unit=args.labels_per_unit,
    )
    if not writer:
        return 0
    result = explanations.result
    print(
        f"layer {explanations.layer}: {len(result.iou)} units, mean IoU {result.iou.mean():.4f}"
        + (f", {int(result.certified.sum())} proved optimal" if args.exact else "")
    )
    print(f"wrote {args.out / 'formulas.csv'} and {args.out / 'formulas.json'}")
    return 0


def run_directions(args: argparse.Namespace) -> int:
    from jaxdissect.cli.dissect import refuse_weights_with_features, start_processes
    from jaxdissect.compositional.directions import DirectionConfig, directions
    from jaxdissect.sources import features_activations, load_model

    refuse_weights_with_features(args)
    try:
        settings = DirectionConfig(
            heldout=args.heldout,
            seed=args.seed,
            min_pixels=args.min_pixels,
            epochs=args.epochs,
            batch_size=args.step_images,
            learning_rate=args.learning_rate,
        )
    except DissectError as error:  # its fields are flags, batch_size --step-images
        raise DissectError(error.for_cli({"batch_size": "--step-images"})) from None
    writer = start_processes(args)
    if args.features is not None:
        source = features_activations(args.features, args.layout, args.layer)
    else:
        source = load_model(args.model, args.weights)
    found = _run_on_layer(directions, args, source, writer, settings=settings)
    if not writer:
        return 0
    rows = found.rows
    beats = sum(r["iou_direction"] >= r["iou_best_unit"] + 0.05 for r in rows)
    print(
        f"layer {found.layer}: {len(rows)} concepts, mean held-out IoU "
        f"{np.mean([r['iou_direction'] for r in rows]):.4f} (directions) against "
        f"{np.mean([r['iou_best_unit'] for r in rows]):.4f} (best units); {beats} directions "
        "beat their best unit by at least 0.05"
    )
    print(f"wrote {args.out / 'directions.csv'} and {args.out / 'directions.npz'}")
    if not args.no_report:
        print(f"report: {args.out / 'directions.html'}")
    return 0


def _run_on_layer(analysis, args: argparse.Namespace, source, writer: bool, **settings):
    """``analysis`` (``explain`` or ``directions``) of --layer of ``source`` over the probe,
    with the options every pass over the probe takes, and the analysis's own ``settings``."""
    from jaxdissect.config import DissectConfig
    from jaxdissect.data.broden import open_broden

    return analysis(
        open_broden(args.dataset, args.categories),
        source,
        DissectConfig(quantile=args.quantile, batch_size=args.batch_size, kernel=args.kernel),
        args.out,
        layer=args.layer,
        weights=args.weights,
        cache=args.cache,
        report=not args.no_report,
        progress=not args.no_progress and writer,
        **settings,
    )
