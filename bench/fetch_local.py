"""Fetching and extracting a miniature Broden from a server on 127.0.0.1 (no network).

    python -m bench.fetch_local [--images 1000] [--repeats 3]

Builds, once, a Broden-shaped folder (``bench.whole_process.build``: 224 px JPEGs, 112 px
label planes) in build/fetch_local/, zips it under ``broden1_224/`` as CSAIL's archive is,
and serves it from memory with Range support (``tests/http_fixture.Server``). Each repeat
times ``python -m jaxdissect fetch broden1_224 --url ... --dir DIR`` as a process (download,
SHA-256, safe extraction into a staging folder, rename), and once more with the transfer
cut off half way (resumed in the same run after a 1 s backoff). Prints a table and writes
it, with the machine and the command, to bench/results/.
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import subprocess
import sys
import time
import zipfile
from pathlib import Path

from bench.whole_process import build

ROOT = Path(__file__).parent.parent


def zip_folder(folder: Path, path: Path) -> None:
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
        for file in sorted(folder.rglob("*")):
            archive.write(file, f"broden1_224/{file.relative_to(folder).as_posix()}")


def fetch_once(url: str, directory: Path) -> float:
    shutil.rmtree(directory, ignore_errors=True)
    command = [sys.executable, "-m", "jaxdissect", "fetch", "broden1_224", "--url", url,
               "--dir", str(directory), "--no-progress"]  # fmt: skip
    start = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, cwd=ROOT)
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"fetch failed:\n{done.stderr}")
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--images", type=int, default=1000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--folder", type=Path, default=Path("build/fetch_local"))
    parser.add_argument(
        "--result", type=Path, default=Path("bench/results/cpu-2core-fetch-local.txt")
    )
    args = parser.parse_args()
    sys.path.insert(0, str(ROOT / "tests"))
    from http_fixture import Server

    build(args.folder, args.images)
    archive = args.folder / "broden1_224.zip"
    if not archive.exists():
        zip_folder(args.folder / "broden", archive)
    data = archive.read_bytes()
    files = sum(1 for p in (args.folder / "broden").rglob("*") if p.is_file())
    unpacked = sum(p.stat().st_size for p in (args.folder / "broden").rglob("*") if p.is_file())
    server = Server()
    server.files["broden1_224.zip"] = data
    url = server.url("broden1_224.zip")
    load = os.getloadavg()[0]
    try:
        times = [fetch_once(url, args.folder / "fetched") for _ in range(args.repeats)]
        server.cut_after = [len(data) // 2]
        cut = fetch_once(url, args.folder / "fetched")
    finally:
        server.close()
    median = sorted(times)[len(times) // 2]
    lines = [
        f"command: python -m bench.fetch_local --images {args.images} --repeats {args.repeats}",
        f"machine: {os.cpu_count()} CPU cores, {platform.system()}, Python "
        f"{platform.python_version()}; load average {load:.1f} at the start",
        f"archive: {len(data) / 2**20:.1f} MiB zip of {files} files, {unpacked / 2**20:.1f} MiB "
        f"unpacked ({args.images} images 224 px, labels 112 px), served from 127.0.0.1",
        f"fetch (process: download, SHA-256, safe extraction, rename), median of {args.repeats}: "
        f"{median:.2f} s ({min(times):.2f}-{max(times):.2f}); "
        f"{len(data) / 2**20 / median:.0f} MiB/s of archive",
        f"fetch cut off half way, resumed in the same run (includes the 1 s backoff): {cut:.2f} s",
    ]
    text = "\n".join(lines) + "\n"
    print(text, end="")
    args.result.parent.mkdir(parents=True, exist_ok=True)
    args.result.write_text(text)


if __name__ == "__main__":
    main()
