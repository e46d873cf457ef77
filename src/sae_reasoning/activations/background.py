"""Shard writing on a background thread, so disk I/O overlaps the forward pass.

The queue is bounded: when the disk falls behind, the producer waits instead of piling
activations up in memory. An error on the writer thread (a full disk, say) is raised in
the producer at its next call, and the batches queued after it are dropped unwritten;
shards written before it stay complete on disk.

When the producer stops (Ctrl-C, an error in the forward pass), `abort` still writes
every batch it had handed over: each shard those rows complete is on disk and in the
manifest before the exception goes on, so a re-run resumes after all of them. Only the
rows of the last, unfinished shard are dropped.
"""

from __future__ import annotations

import queue
import threading

from sae_reasoning.activations.store import ShardWriter


class BackgroundWriter:
    """Feeds {key: ShardWriter} from one thread; `put({key: rows_kwargs})` per batch."""

    def __init__(self, writers: dict[object, ShardWriter], max_pending: int = 2):
        self.writers = writers
        self._queue: queue.Queue = queue.Queue(maxsize=max_pending)
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._loop, name="shard-writer", daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        while True:
            item = self._queue.get()
            if item is None:
                return
            if self._error is not None:
                continue  # drain without writing: the run is failing
            try:
                for key, rows in item.items():
                    self.writers[key].add(**rows)
            except BaseException as exc:  # noqa: BLE001 - handed to the producer thread
                self._error = exc

    def _raise(self) -> None:
        if self._error is not None:
            raise self._error

    def put(self, rows: dict[object, dict]) -> None:
        self._raise()
        self._queue.put(rows)

    def close(self) -> dict[object, dict]:
        """Wait for queued batches, write the last shards; returns each writer's manifest."""
        self._queue.put(None)
        self._thread.join()
        self._raise()
        return {key: w.close() for key, w in self.writers.items()}

    def abort(self) -> None:
        """The producer stops: write the batches already handed over (every shard they
        complete is recorded in the manifest), drop the unfinished last shard."""
        self._queue.put(None)
        self._thread.join()
