"""Input drift of the active model: live requests sampled off the request path into a sliding window per input,
scored against the reference statistics the artifact carries (its signed manifest's "input_reference" file, as
shadowstats.reference_document writes it). At most one request per sample interval is looked at, by one worker
thread behind a small queue: the cost on the request path is one clock read and, now and then, one queue put.
"""

from __future__ import annotations

import json
import os
import queue
import threading
import time
from typing import Any

from .shadowstats import DRIFT_WINDOW, InputDrift

REFERENCE_KEY = "input_reference"  # the manifest key naming the reference statistics file
SAMPLE_INTERVAL_S = 0.05  # at most 20 requests a second are looked at, whatever the rate
QUEUE_SIZE = 4


class ReferenceMissing(Exception):
    """The artifact carries no usable reference statistics: the reason, for health and the stats file."""


def load_reference(folder: str, verified_files: dict[str, Any]) -> dict[str, list[dict[str, Any]]]:
    """{input name: per-channel reference} from the file the artifact's manifest names under "input_reference";
    only a file the signature verification read is trusted. ReferenceMissing saying why otherwise."""
    artifact = os.path.basename(os.path.normpath(folder))
    try:
        with open(os.path.join(folder, "manifest.json"), encoding="utf-8") as handle:
            name = json.load(handle).get(REFERENCE_KEY)
    except (OSError, ValueError, AttributeError) as exc:
        raise ReferenceMissing(f"artifact {artifact}: manifest.json cannot be read: {exc}") from None
    if not isinstance(name, str) or not name:
        raise ReferenceMissing(f"artifact {artifact} carries no input reference statistics (no \"{REFERENCE_KEY}\" "
                               "in its manifest); import the model again with sample inputs")
    path = os.path.realpath(os.path.join(folder, name))
    if path not in verified_files:
        raise ReferenceMissing(f"artifact {artifact}: {name!r} is not in its signed file list, so it is not used")
    try:
        with open(path, encoding="utf-8") as handle:
            data = json.load(handle)
        inputs = data["inputs"]
        for channels in inputs.values():
            for c in channels:
                if not (float(c["high"]) > float(c["low"]) and c["counts"] and float(c["std"]) >= 0):
                    raise ValueError("a channel's histogram bounds or std are invalid")
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        raise ReferenceMissing(f"artifact {artifact}: {name!r} is not reference statistics: {exc}") from None
    return {str(k): v for k, v in inputs.items()}


class DriftWatch:
    """The drift of one loaded model's inputs: `offer` from request threads, one worker updates the windows."""

    def __init__(self, reference: dict[str, list[dict[str, Any]]], window: int = DRIFT_WINDOW,
                 sample_interval_s: float = SAMPLE_INTERVAL_S) -> None:
        self.inputs = {name: InputDrift(channels, window) for name, channels in reference.items()}
        self.sample_interval_s = sample_interval_s
        self.sampled = 0
        self.dropped = 0
        self._next = 0.0
        self._lock = threading.Lock()
        self._queue: queue.Queue[dict[str, Any] | None] = queue.Queue(maxsize=QUEUE_SIZE)
        self._thread = threading.Thread(target=self._work, name="fleetdesk-drift", daemon=True)
        self._thread.start()

    def offer(self, feeds: dict[str, Any]) -> None:
        now = time.monotonic()
        with self._lock:
            if now < self._next:
                return
            self._next = now + self.sample_interval_s
            try:
                self._queue.put_nowait(feeds)
                self.sampled += 1
            except queue.Full:
                self.dropped += 1

    def _work(self) -> None:
        while True:
            feeds = self._queue.get()
            if feeds is None:
                return
            for name, drift in self.inputs.items():
                if name in feeds:
                    drift.add(feeds[name])

    def close(self) -> None:
        self._queue.put(None)
        self._thread.join(30.0)

    def describe(self) -> dict[str, Any]:
        return {"state": "watching", "sampled": self.sampled, "dropped": self.dropped,
                "inputs": {name: drift.scores() for name, drift in self.inputs.items()}}
