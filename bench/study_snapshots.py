"""The training_dynamics study's dissection stage: one pass per training run against one
dissection per snapshot.

    python -m bench.study_snapshots [--config smoke] [--workdir DIR] [--rounds 2] [key=value ...]

Runs the study once at ``--config`` (training and all; a rerun reuses it), then, in this
one process, times for every run of the study the dissection of all its snapshots (units
and the rotated basis), each time into empty folders: ``one_at_a_time`` (the study's code
before the many-checkpoint path: ``dissect_model`` per snapshot) and ``one_pass``
(``dissect_models``: the run's snapshots as one forward over stacked parameters), in
alternating rounds (the first round also pays for compiling what both share). Asserts that
both write the same files, byte for byte, and prints the seconds of each round.
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import sys
import time
from pathlib import Path


def _files(folder: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(folder)): p.read_bytes()
        for p in sorted(folder.rglob("*"))
        if p.is_file() and not any(part.startswith(".") for part in p.relative_to(folder).parts)
    }


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--config", default="smoke")
    parser.add_argument("--workdir", default="runs/bench-study-snapshots")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_args(argv)

    from experiments import cli, common, training_dynamics
    from train.checkpoints import feature_model, list_checkpoints

    workdir = Path(args.workdir)
    study = ["--config", args.config, "--workdir", str(workdir), "--no-progress"]
    if training_dynamics.main([*study, *args.overrides]) != 0:
        return 2
    _, config = cli.parse_args(
        training_dynamics.__doc__, training_dynamics.PRESETS, training_dynamics.Config,
        ["--config", args.config, *args.overrides],
    )  # fmt: skip
    probe = common.prepare_probe(
        workdir / "probe", config.probe.images, config.probe.image_size, config.probe.seed, False
    )
    layer, rotated = config.layer, config.layer + common.ROTATED
    runs = [
        (workdir / "runs" / variation / f"seed{seed}", seed)
        for variation in config.variations
        for seed in range(config.seeds)
    ]

    def units_of(model):
        return model.apply(probe.images[:1], (layer,))[layer].shape[-1]

    def rotation(units, seed, step):
        key = training_dynamics.rotation_key(seed, step)
        return {rotated: (layer, training_dynamics.random_rotation(key, units))}

    def one_at_a_time(run_dir, seed, out):
        for step in list_checkpoints(run_dir):
            model = feature_model(run_dir, step)
            common.dissect_model(
                model, [layer], probe, config.dissect, out / str(step),
                common.checkpoint_identity(run_dir, step), rotation(units_of(model), seed, step),
            )  # fmt: skip

    def one_pass(run_dir, seed, out):
        steps = list_checkpoints(run_dir)
        models = [feature_model(run_dir, step) for step in steps]
        units = units_of(models[0])  # the snapshots of one run share an architecture
        common.dissect_models(
            models, [layer], probe, config.dissect, out, [str(s) for s in steps],
            [common.checkpoint_identity(run_dir, step) for step in steps],
            [rotation(units, seed, step) for step in steps],
        )  # fmt: skip

    scratch = workdir / "bench"
    seconds = {"one_at_a_time": [], "one_pass": []}
    for round_ in range(args.rounds):
        for name, path in (("one_at_a_time", one_at_a_time), ("one_pass", one_pass)):
            out = scratch / name
            shutil.rmtree(out, ignore_errors=True)
            started = time.perf_counter()
            for run_dir, seed in runs:
                path(run_dir, seed, out / run_dir.parent.name / run_dir.name)
            seconds[name].append(time.perf_counter() - started)
            print(f"round {round_ + 1} {name}: {seconds[name][-1]:.1f} s", flush=True)
    assert _files(scratch / "one_at_a_time") == _files(scratch / "one_pass")
    checkpoints = sum(len(list_checkpoints(run_dir)) for run_dir, _ in runs)
    print(
        f"{len(runs)} runs, {checkpoints} snapshots, {config.probe.images} probe images at "
        f"{config.probe.image_size} px, {platform.processor() or platform.machine()}, "
        f"{os.cpu_count()} cpus, load {os.getloadavg()[0]:.1f}: every file byte-identical; "
        "seconds per round: "
        + ", ".join(f"{k} {[round(s, 1) for s in v]}" for k, v in seconds.items())
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
