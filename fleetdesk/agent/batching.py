"""Dynamic micro-batching of inference requests, and the LRU cache of results keyed by input hash.

Standard library only: the arrays are numpy's, but numpy is reached through the runner's module.
"""

from __future__ import annotations

import collections
import threading
import time
from collections.abc import Callable
from typing import Any


class Pending:
    """One request waiting in the batcher: its feeds, rows, and (once run) its outputs or its error."""

    __slots__ = ("arrived", "batch", "done", "error", "feeds", "outputs", "rows", "signature")

    def __init__(self, feeds: dict[str, Any]) -> None:
        self.feeds = feeds
        first = next(iter(feeds.values()))
        self.rows = int(first.shape[0]) if first.ndim else 1
        # Requests stack only with requests whose inputs agree on everything but the row count. Only compared for
        # equality: (name, dtype, trailing shape) per input, or a marker unique to this request.
        self.signature: tuple[object, ...] = tuple(
            sorted((name, a.dtype.str, tuple(a.shape[1:])) for name, a in feeds.items()))
        if any(a.shape[:1] != first.shape[:1] for a in feeds.values()):
            self.signature = ("alone", id(self))  # inputs disagree on rows: never stacked with others
        self.arrived = time.monotonic()
        self.done = threading.Event()
        self.outputs: list[Any] | None = None
        self.error: BaseException | None = None
        self.batch = 0


class MicroBatcher:
    """Collects requests up to `max_batch` rows or `max_wait_s` after the first arrived, runs them as one.

    `run(feeds) -> outputs` is the session call; `concat(list) -> array` and the split along axis 0 are
    numpy's. One worker thread owns the queue; request threads block on their Pending's event.

    A lone client should not pay --max-wait-ms on every request (measured on the test CNN: 0.4 ms a request
    without waiting, 6 ms with a 5 ms wait), so a batch waits for companions only when some may come:
    a request is announced (`expect`: the server is reading it; `forget`: it never reached `submit`), or
    one of the last RECENT runs had company (several requests, or more queued while it ran). Announcements
    alone are not enough: under the GIL a burst's other requests are often not yet read when the first
    one is ready.
    """

    RECENT = 8

    def __init__(self, run: Callable[[dict[str, Any]], list[Any]], concat: Callable[[list[Any]], Any],
                 max_batch: int, max_wait_s: float, on_run: Callable[[int], None] | None = None) -> None:
        self._run = run
        self._concat = concat
        self.max_batch = max(1, max_batch)
        self.max_wait_s = max(0.0, max_wait_s)
        self._on_run = on_run
        self._queue: collections.deque[Pending] = collections.deque()
        self._cond = threading.Condition()
        self._closed = False
        self._expected = 0  # requests announced but not yet submitted
        self._recent: collections.deque[bool] = collections.deque(maxlen=self.RECENT)  # runs that had company
        self._worker = threading.Thread(target=self._loop, name="fleetdesk-batcher", daemon=True)
        self._worker.start()

    def expect(self) -> None:
        """A request is on its way (its body is being read and checked)."""
        with self._cond:
            self._expected += 1

    def forget(self) -> None:
        """An announced request will not come (it was refused, or answered from the cache)."""
        with self._cond:
            self._expected = max(0, self._expected - 1)
            self._cond.notify()

    def submit(self, feeds: dict[str, Any], timeout: float | None = None,
               expected: bool = False) -> tuple[list[Any], int]:
        """(outputs, rows in the run that produced them); re-raises the run's error in the caller.

        `expected`: this request was announced with expect(), which it now fulfils.
        """
        item = Pending(feeds)
        with self._cond:
            if expected:
                self._expected = max(0, self._expected - 1)
            if self._closed:
                # The model was swapped while this request was read: its session still works, run it here.
                return self._run(feeds), item.rows
            self._queue.append(item)
            self._cond.notify()
        if not item.done.wait(timeout):
            raise TimeoutError(f"no answer from the model within {timeout} s")
        if item.error is not None:
            raise item.error
        assert item.outputs is not None
        return item.outputs, item.batch

    def close(self) -> None:
        """Stop taking requests; what is queued still runs."""
        with self._cond:
            self._closed = True
            self._cond.notify()

    def _take(self) -> list[Pending] | None:
        """The next group to run, waiting for companions until the first one's deadline; None once closed."""
        with self._cond:
            while not self._queue:
                if self._closed:
                    return None
                self._cond.wait()
            first = self._queue[0]
            deadline = first.arrived + self.max_wait_s
            while True:
                group, rows = self._group(first)
                if rows >= self.max_batch or self._closed or not (self._expected or any(self._recent)):
                    break
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self._cond.wait(left)
            for item in group:
                self._queue.remove(item)
            return group

    def _group(self, first: Pending) -> tuple[list[Pending], int]:
        group, rows = [first], first.rows
        for item in self._queue:
            if item is first or item.signature != first.signature:
                continue
            if rows + item.rows > self.max_batch:
                break
            group.append(item)
            rows += item.rows
        return group, rows

    def _loop(self) -> None:
        while True:
            group = self._take()
            if group is None:
                return
            self._execute(group)
            with self._cond:
                self._recent.append(len(group) > 1 or bool(self._queue))

    def _execute(self, group: list[Pending]) -> None:
        rows = sum(item.rows for item in group)
        try:
            if len(group) == 1:
                results = [self._run(group[0].feeds)]
            else:
                feeds = {name: self._concat([item.feeds[name] for item in group]) for name in group[0].feeds}
                outputs = self._run(feeds)
                results = self._split(outputs, group, rows)
            if self._on_run is not None:
                self._on_run(rows)
            for index, item in enumerate(group):
                item.outputs, item.batch = results[index], rows
        except BaseException as exc:  # the error belongs to the requests, never to the worker
            for item in group:
                item.error = exc
        finally:
            for item in group:
                item.done.set()

    def _split(self, outputs: list[Any], group: list[Pending], rows: int) -> list[list[Any]]:
        if any(getattr(out, "ndim", 0) == 0 or out.shape[0] != rows for out in outputs):
            # An output whose first dim is not the rows (a model that reduces over the batch) cannot be
            # split back: answer each request by itself, as if batching were off.
            return [self._run(item.feeds) for item in group]
        results: list[list[Any]] = []
        start = 0
        for item in group:
            results.append([out[start:start + item.rows] for out in outputs])
            start += item.rows
        return results


class ResultCache:
    """At most `size` entries, least recently used evicted first; thread-safe."""

    def __init__(self, size: int) -> None:
        self.size = max(0, size)
        self._entries: collections.OrderedDict[str, Any] = collections.OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: str) -> Any | None:
        if not self.size:
            return None
        with self._lock:
            value = self._entries.get(key)
            if value is not None:
                self._entries.move_to_end(key)
            return value

    def put(self, key: str, value: Any) -> None:
        if not self.size:
            return
        with self._lock:
            self._entries[key] = value
            self._entries.move_to_end(key)
            while len(self._entries) > self.size:
                self._entries.popitem(last=False)

    def __len__(self) -> int:
        with self._lock:
            return len(self._entries)
