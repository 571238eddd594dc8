"""Checkpoints of a dissection's passes, so that a killed run resumes where it stopped.

Every ``every`` batches, and at the end of each pass, the pass's states (and the index of
the next batch) are saved with Orbax, atomically. A restarted run with the same inputs
(the fingerprint: config, data and shapes) restores the latest and skips the batches it
covers; batches are deterministic, so the results are identical to an uninterrupted run.
A fingerprint that differs starts afresh.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax


class PassCheckpoints:
    def __init__(self, directory: str | Path, fingerprint: dict, every: int = 100):
        if every < 1:
            raise ValueError(f"checkpoint interval must be >= 1 batch, got {every}")
        self.directory = Path(directory).absolute()
        self.every = every
        text = json.dumps(fingerprint, sort_keys=True, default=str)
        stamp = self.directory / "fingerprint.json"
        if stamp.is_file() and stamp.read_text() != text:
            shutil.rmtree(self.directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        stamp.write_text(text)
        self._managers = {}

    def _manager(self, name: str):
        import orbax.checkpoint as ocp

        if name not in self._managers:
            options = ocp.CheckpointManagerOptions(max_to_keep=1, enable_async_checkpointing=False)
            self._managers[name] = ocp.CheckpointManager(self.directory / name, options=options)
        return self._managers[name]

    def restore(self, name: str, template: Any) -> tuple[int, Any]:
        """(next batch, states) of pass ``name``, or (0, None) when it has not started."""
        import orbax.checkpoint as ocp

        manager = self._manager(name)
        step = manager.latest_step()
        if step is None:
            return 0, None
        abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, template)
        return step, manager.restore(step, args=ocp.args.StandardRestore(abstract))

    def save(self, name: str, next_batch: int, states: Callable[[], Any], last: bool) -> None:
        """Saves after batch ``next_batch - 1`` when the interval is due or the pass ends."""
        import orbax.checkpoint as ocp

        if next_batch % self.every and not last:
            return
        manager = self._manager(name)
        manager.save(next_batch, args=ocp.args.StandardSave(states()), force=True)
        manager.wait_until_finished()

    def remove(self) -> None:
        """Done: the outputs are written."""
        shutil.rmtree(self.directory, ignore_errors=True)
