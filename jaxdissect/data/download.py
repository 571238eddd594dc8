"""Resumable HTTP(S) downloads: a partial file beside the target, continued with Range.

``download(url, target)`` writes ``target.part`` and a small ``target.part.json`` (the URL
and the validators the server gave: ETag, Last-Modified, total length). An interrupted
transfer continues from the partial file's length with ``Range: bytes=N-`` and ``If-Range``,
in the same call (a few retries with exponential backoff) or in a later one. A server that
ignores Range (``200`` instead of ``206``), or whose file changed, restarts the file from
byte 0. The caller verifies the finished ``.part`` file and renames it into place, so that
``target`` exists only when complete and verified.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import re
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path

from jaxdissect.errors import DissectError, notice
from jaxdissect.outdir import open_plain_file, replace_file

CHUNK_BYTES = 1 << 20
TIMEOUT_S = 60.0
_CONTENT_RANGE = re.compile(r"^bytes (\d+)-(\d+)/(\d+|\*)$")


class TransferError(Exception):
    """A transfer that stopped early or failed in a way a retry may fix."""


def partial_path(target: Path) -> Path:
    return target.with_name(target.name + ".part")


def state_path(target: Path) -> Path:
    """The state file of ``target``'s partial file (its URL and the server's validators)."""
    return target.with_name(target.name + ".part.json")


def _read_state(target: Path, url: str) -> dict:
    """The saved validators of ``target``'s partial file, or {} when they are for another URL
    (or unreadable): the partial file is then not resumed."""
    state = _state(target)
    return state if isinstance(state, dict) and state.get("url") == url else {}


def _state(target: Path):
    """What ``target``'s state file holds, or None when it is absent or unreadable (or not a
    file: a FIFO would block the read for ever)."""
    path = state_path(target)
    try:
        return json.loads(path.read_text()) if path.is_file() else None
    except (OSError, ValueError, RecursionError):
        return None


def _write_state(target: Path, state: dict) -> None:
    replace_file(state_path(target), json.dumps(state))


def _recorded(target: Path) -> bool:
    """Whether a state file of ours (written by ``_transfer`` before the partial file)
    records ``target``'s partial file."""
    state = _state(target)
    return isinstance(state, dict) and isinstance(state.get("url"), str)


def discard_partial(target: Path) -> None:
    """Removes ``target``'s partial file and its state, when that state file records it:
    a ``.part`` file with no state of ours beside it is someone else's, and is kept."""
    if _recorded(target):
        for path in (partial_path(target), state_path(target)):
            path.unlink(missing_ok=True)


def report_unneeded_partial(target: Path, why: str) -> None:
    """Names on stderr, one line each, ``target``'s partial file and state file, left by an
    interrupted download that is no longer needed (``why`` says why: "x is fetched"). They
    are removed when the state file records the partial file (``discard_partial``: ours),
    else kept: a ``.part`` file no state of ours records may be anyone's."""
    left = [p for p in (partial_path(target), state_path(target)) if os.path.lexists(p)]
    ours = _recorded(target)
    if ours:
        discard_partial(target)
    for path in left:
        if ours:
            message = f"removed {path}, left by an interrupted download ({why})"
        else:
            message = (
                f"{path}: not needed ({why}); not removed (no "
                f"{state_path(target).name} of jaxdissect's records it): remove it yourself"
            )
        notice(message)


def _open(url: str, start: int, state: dict):
    headers = {"User-Agent": "jaxdissect", "Accept-Encoding": "identity"}
    if start > 0:
        headers["Range"] = f"bytes={start}-"
        etag = state.get("etag")
        # A weak ETag may not validate a range (RFC 9110): fall back to the date.
        validator = etag if etag and not etag.startswith("W/") else state.get("last_modified")
        if validator:  # the server sends the whole new file if it changed since
            headers["If-Range"] = validator
    request = urllib.request.Request(url, headers=headers)
    try:
        return urllib.request.urlopen(request, timeout=TIMEOUT_S)
    except urllib.error.HTTPError as error:
        if error.code == 416:  # nothing left past ``start``
            return error
        if error.code >= 500 or error.code == 429:
            raise TransferError(f"HTTP {error.code} {error.reason}") from None
        raise DissectError(f"{url}: HTTP {error.code} {error.reason}") from None
    except (urllib.error.URLError, OSError, http.client.HTTPException) as error:
        raise TransferError(str(getattr(error, "reason", error))) from None


def _transfer(url: str, target: Path, state: dict, progress, max_bytes: int) -> dict:
    """One request: appends to (or restarts) the partial file; returns the updated state.

    Raises TransferError when the connection breaks before the end."""
    part = partial_path(target)
    start = part.stat().st_size if part.exists() and state else 0
    response = _open(url, start, state)
    with contextlib.closing(response):
        status = response.status if hasattr(response, "status") else response.code
        if status == 416:
            total = state.get("total")
            if total is not None and start == total:
                return state  # already complete
            discard_partial(target)  # not a prefix of the file: the next attempt restarts
            raise TransferError("the server refused the resumed range")
        if status == 206:
            match = _CONTENT_RANGE.match(response.headers.get("Content-Range", ""))
            if match is None or int(match.group(1)) != start:
                raise DissectError(
                    f"{url}: the server answered a range request with Content-Range "
                    f"{response.headers.get('Content-Range')!r}, not bytes {start}-"
                )
            response_total = None if match.group(3) == "*" else int(match.group(3))
        else:  # 200: the whole file, from byte 0 (no Range support, or the file changed)
            start = 0
            length = response.headers.get("Content-Length")
            response_total = int(length) if length is not None else None
        state = {
            "url": url,
            "etag": response.headers.get("ETag"),
            "last_modified": response.headers.get("Last-Modified"),
            "total": response_total if response_total is not None else state.get("total"),
        }
        if start == 0:
            state["total"] = response_total
        if state["total"] is not None and state["total"] > max_bytes:
            raise DissectError(f"{url}: {state['total']} bytes, more than the {max_bytes} allowed")
        _write_state(target, state)
        progress.reset(state["total"], start)
        with os.fdopen(open_plain_file(part, "jaxdissect's partial download"), "r+b") as file:
            file.seek(start)
            file.truncate()
            written = start
            while True:
                try:
                    chunk = response.read(CHUNK_BYTES)
                except (OSError, http.client.HTTPException) as error:
                    raise TransferError(
                        f"connection lost after {written} bytes ({error})"
                    ) from None
                if not chunk:
                    break
                written += len(chunk)
                if written > max_bytes:
                    raise DissectError(f"{url}: more than the {max_bytes} bytes allowed")
                file.write(chunk)
                progress.update(len(chunk))
    if state["total"] is not None and written != state["total"]:
        raise TransferError(f"connection closed after {written} of {state['total']} bytes")
    if state["total"] is None:
        state["total"] = written
        _write_state(target, state)
    return state


class _Progress:
    """A tqdm bar in bytes (size, rate), or nothing."""

    def __init__(self, name: str, enabled: bool):
        self.bar = None
        if enabled:
            from jaxdissect.progress import progress_bar

            self.bar = progress_bar(
                desc=name, unit="B", unit_scale=True, unit_divisor=1024, leave=True
            )

    def reset(self, total: int | None, start: int) -> None:
        if self.bar is not None:
            self.bar.reset(total=total)
            self.bar.update(start)

    def update(self, count: int) -> None:
        if self.bar is not None:
            self.bar.update(count)

    def note(self, message: str) -> None:
        """A line on stderr that does not break the bar."""
        if self.bar is not None:
            self.bar.write(message, file=sys.stderr)
        else:
            print(message, file=sys.stderr, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def download(
    url: str,
    target: Path,
    *,
    max_bytes: int,
    retries: int = 5,
    backoff_s: float = 1.0,
    progress: bool = True,
    sleep: Callable[[float], None] = time.sleep,
) -> Path:
    """Downloads ``url`` into ``target``'s partial file, resuming one left by an earlier call.

    Args:
      url: an http(s) URL.
      target: the file the caller will rename the result to; the partial file is
        ``target.part``, in the same folder.
      max_bytes: the largest file accepted (the server's length is checked first).
      retries: further attempts after a broken transfer, each resuming where the last
        stopped, after ``backoff_s``, then twice as long, and so on.
      progress: show a progress bar (bytes and rate) on stderr.

    Returns:
      The complete partial file (still to be verified and renamed by the caller).

    Raises:
      DissectError: the server refused the request (4xx) or kept failing; the partial file
        is kept for the next call to resume.
    """
    target.parent.mkdir(parents=True, exist_ok=True)
    state = _read_state(target, url)
    if not state:
        part = partial_path(target)
        if not _recorded(target) and (part.exists() or part.is_symlink()):
            raise DissectError(
                f"{part}: not a download of jaxdissect's (no {state_path(target).name} "
                "records it); move it away, or choose another --dir"
            )
        discard_partial(target)  # ours, of another URL: restarted
    bar = _Progress(target.name, progress)
    try:
        for attempt in range(retries + 1):
            try:
                _transfer(url, target, state, bar, max_bytes)
                return partial_path(target)
            except TransferError as error:
                state = _read_state(target, url)
                if attempt == retries:
                    part = partial_path(target)
                    resume = f" to resume from {part}" if part.exists() else ""
                    raise DissectError(
                        f"{url}: download failed after {retries + 1} attempts ({error}); "
                        f"run the same command again{resume}"
                    ) from None
                wait = backoff_s * 2**attempt
                bar.note(
                    f"jaxdissect: {error}; retrying in {wait:g} s ({attempt + 1} of {retries})"
                )
                sleep(wait)
    finally:
        bar.close()
    raise AssertionError("unreachable")
