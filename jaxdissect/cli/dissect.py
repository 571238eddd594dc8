"""``dissect``: one layer or several, from a features file, a model or several checkpoints
of one, in one process or under jax.distributed."""

from __future__ import annotations

import argparse
import sys

from jaxdissect.errors import DissectError, check_regular_file


def run_dissect(args: argparse.Namespace) -> int:
    from jaxdissect import runtime
    from jaxdissect.config import DissectConfig
    from jaxdissect.data.broden import open_broden
    from jaxdissect.pipeline import dissect
    from jaxdissect.sources import features_activations, load_model

    writer = start_processes(args)
    config = DissectConfig(
        quantile=args.quantile,
        iou_threshold=args.iou_threshold,
        union=args.union,
        batch_size=args.batch_size,
        top_images=args.top_images,
        kernel=args.kernel,
    )
    if args.features is not None:
        if args.layer and len(args.layer) > 1:
            raise DissectError("--features holds one layer: give at most one --layer")
        refuse_weights_with_features(args)
        source = features_activations(
            args.features, args.layout, args.layer[0] if args.layer else None
        )
    else:
        if not args.layer:
            raise DissectError("--model needs at least one --layer")
        for weights in args.weights or []:
            check_regular_file(weights, "weights file")
    dataset = open_broden(args.dataset, args.categories)
    announce_compile(config)
    weights, names = args.weights[0] if args.weights else None, None
    if args.features is None:
        if args.weights and len(args.weights) > 1:  # every checkpoint in one pass
            from jaxdissect.many import checkpoint_names

            source = [load_model(args.model, path) for path in args.weights]
            weights, names = args.weights, checkpoint_names(args.weights, source)
        else:
            source = load_model(args.model, weights)
    found = dissect(
        dataset,
        source,
        config,
        args.out,
        layers=args.layer,
        weights=weights,
        cache=args.cache,
        report=not args.no_report,
        checkpoint_every=args.checkpoint_every,
        progress=not args.no_progress and writer,
    )
    if runtime.process_index() != 0:
        return 0
    if names is None:
        _print_layers(args, found)
    else:
        _print_checkpoints(args, names, found)
    print(peak_memory())
    return 0


def refuse_weights_with_features(args: argparse.Namespace) -> None:
    """--weights names the file of a --model's parameters: refused beside --features."""
    if args.features is not None and args.weights is not None:
        raise DissectError("--weights goes with --model, not --features")


def _print_layers(args: argparse.Namespace, dissections: dict) -> None:
    """Each layer's summary and where its files went."""
    from jaxdissect.report.results import format_summary

    for layer, dissection in dissections.items():
        out = args.out if len(dissections) == 1 else args.out / layer
        print(f"layer {layer}:")
        print(format_summary(dissection.summary))
        print(f"wrote {out / 'tally.csv'} and {out / 'results.json'}")
        if not args.no_report:
            print(f"report: {out / 'report.html'}")
    if len(dissections) > 1 and not args.no_report:
        print(f"index: {args.out / 'index.html'}")


def _print_checkpoints(args: argparse.Namespace, names: list[str], found: dict) -> None:
    """``dissect --model M --weights A --weights B ...``: each checkpoint's layers'
    summaries and its folder, or that it was reused."""
    from jaxdissect.report.results import format_summary

    for name in names:
        if name not in found:
            print(f"{name}: already dissected in {args.out / name} (reused)")
            continue
        for layer, dissection in found[name].items():
            print(f"{name} layer {layer}:")
            print(format_summary(dissection.summary))
        print(f"wrote {args.out / name}")


def announce_compile(config) -> None:
    """Compiles the CPU kernels first, saying so on the first line, when a CPU dissection
    would otherwise compile them silently in its first batch."""
    from jaxdissect.kernels import kernel_name
    from jaxdissect.precompile import announce_and_compile, kernels_cached

    cpu = kernel_name(config) == "cpu"  # a DissectError for a bad combination
    if cpu and not kernels_cached():
        announce_and_compile(sys.stderr)


def peak_memory() -> str:
    """The process's peak resident memory, and each device's peak where JAX reports it."""
    import resource

    from jaxdissect import runtime

    host = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB on Linux
    parts = [f"peak memory: host {host:.2f} GiB"]
    # Without JAX imported, no device was used.
    for device in runtime.jax.local_devices() if runtime.loaded() else []:
        stats = device.memory_stats() or {}
        if "peak_bytes_in_use" in stats:
            parts.append(
                f"{device.platform}:{device.id} {stats['peak_bytes_in_use'] / 2**30:.2f} GiB"
            )
    return ", ".join(parts)


JOIN_TIMEOUT_S = 300  # how long a process waits for process 0's coordinator to listen
MAX_PROCESSES = 2**31 - 1


def _wait_for_coordinator(host: str, port: int, args: argparse.Namespace) -> None:
    """Waits, saying so, until process 0 listens at --coordinator. JAX's own wait ends in an
    abort with a C++ stack trace, and says nothing while it waits."""
    import socket
    import time

    print(
        f"jaxdissect: process {args.process_id} of {args.num_processes}: waiting up to "
        f"{JOIN_TIMEOUT_S} s for process 0 at {args.coordinator}",
        file=sys.stderr,
    )
    deadline = time.monotonic() + JOIN_TIMEOUT_S
    while True:
        try:
            socket.create_connection((host, port), timeout=1).close()
            return
        except OSError:
            if time.monotonic() > deadline:
                raise DissectError(
                    f"--coordinator {args.coordinator}: process 0 did not listen within "
                    f"{JOIN_TIMEOUT_S} s (is it running, and is the address right?)"
                ) from None
            time.sleep(0.5)


def start_processes(args: argparse.Namespace) -> bool:
    """Joins a jax.distributed run when --coordinator is given; True for the process that
    writes the outputs (process 0, or the only one)."""
    if args.coordinator is None:
        if args.num_processes is not None or args.process_id is not None:
            raise DissectError("--num-processes and --process-id go with --coordinator")
        return True
    if args.num_processes is None or args.process_id is None:
        raise DissectError("--coordinator needs --num-processes and --process-id")
    host, _, port = args.coordinator.rpartition(":")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise DissectError(
            f"--coordinator {args.coordinator!r}: expected host:port, a port in [1, 65535]"
        )
    if args.num_processes > MAX_PROCESSES:  # JAX's C++ holds it in an int
        raise DissectError(
            f"--num-processes must be at most {MAX_PROCESSES:,}, got {args.num_processes}"
        )
    if not 0 <= args.process_id < args.num_processes:
        raise DissectError(
            f"--process-id must lie in [0, {args.num_processes}), got {args.process_id}"
        )
    from jaxdissect.kernels import check_processes

    check_processes(args.kernel, args.num_processes)  # before waiting for the others
    import jax

    # CPU devices reduce across processes through gloo; accelerators use their own.
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    if args.process_id != 0:
        _wait_for_coordinator(host, int(port), args)
    else:
        print(
            f"jaxdissect: process 0 of {args.num_processes}: waiting up to {JOIN_TIMEOUT_S} s "
            f"for the other {args.num_processes - 1} to join at {args.coordinator}",
            file=sys.stderr,
            flush=True,
        )
    _join(args)
    return jax.process_index() == 0


def _join(args: argparse.Namespace) -> None:
    """jax.distributed.initialize, which returns once every process has joined. Its own
    timeout aborts the process in C++ (a stack trace, exit 134), which Python cannot catch:
    a watchdog thread (initialize releases the GIL) ends the process first, in one line."""
    import os
    import threading

    import jax

    def give_up():
        print(
            f"jaxdissect: error: --coordinator {args.coordinator}: not all "
            f"{args.num_processes} processes joined within {JOIN_TIMEOUT_S} s (start each "
            "with the same --coordinator and --num-processes, and a distinct --process-id)",
            file=sys.stderr,
            flush=True,
        )
        os._exit(2)  # the main thread is inside JAX's C++ and cannot be interrupted

    watchdog = threading.Timer(JOIN_TIMEOUT_S, give_up)
    watchdog.daemon = True
    watchdog.start()
    try:
        jax.distributed.initialize(
            args.coordinator,
            args.num_processes,
            args.process_id,
            initialization_timeout=JOIN_TIMEOUT_S + 30,  # the watchdog's backstop
        )
    except RuntimeError as error:
        raise DissectError(
            f"--coordinator {args.coordinator}: JAX's distributed run did not start ({error})"
        ) from error
    finally:
        watchdog.cancel()
