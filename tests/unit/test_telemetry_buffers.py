"""The laptop's telemetry contract: samples read from the agent's JSON, and bounded ring buffers."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from fleetdesk.telemetry.buffers import RingBuffer, TelemetryStore
from fleetdesk.telemetry.sample import METRICS, Sample, SampleError

# A line as the agent prints it on a Jetson with a model server running (the sample.py docstring's example).
AGENT_LINE = json.dumps({
    "type": "sample", "v": 1, "t": 1763700000.12, "seq": 7,
    "cpu": {"total": 12.5, "per_core": [10.0, 15.0], "freq_mhz": [1800, 1500]},
    "load": [0.5, 0.4, 0.3],
    "mem": {"total_mb": 4000, "used_mb": 1000, "available_mb": 3000},
    "swap": {"total_mb": 0, "used_mb": 0},
    "disk": {"path": "/opt/fleetdesk", "total_mb": 32000, "used_mb": 8000},
    "temps": {"cpu-thermal": 48.25, "gpu-thermal": 51.5, "broken": "n/a"},
    "gpu": {"util_pct": 30, "mem_used_mb": 500, "mem_total_mb": 2000, "temp_c": 45, "power_w": 12.5},
    "throttled": {"raw": "0x50005", "now": ["under-voltage", "throttled"], "since_boot": ["under-voltage"]},
    "inference": {"model": "ab" * 32, "requests": 120, "rate_per_s": 9.8, "p50_ms": 3.1, "p95_ms": 5.0,
                  "p99_ms": 7.2, "errors": 0, "batch_mean": 1.6, "cache_hits": 4},
    "sources": {"cpu": "/proc/stat", "gpu": "tegrastats"},
})


def test_an_agent_line_becomes_a_sample_with_derived_percentages() -> None:
    s = Sample.from_json(json.loads(AGENT_LINE))
    assert s.t == pytest.approx(1763700000.12)
    assert (s.cpu_pct, s.cpu_per_core, s.load1) == (12.5, (10.0, 15.0), 0.5)
    assert s.mem_pct == pytest.approx(25.0)
    assert s.swap_pct is None  # no swap at all is not 0 % of something
    assert s.disk_pct == pytest.approx(25.0)
    assert s.temps == {"cpu-thermal": 48.25, "gpu-thermal": 51.5}  # the unreadable zone is left out
    assert s.temp_c == 51.5
    assert (s.gpu_pct, s.gpu_mem_pct, s.gpu_temp_c, s.gpu_power_w) == (30, 25.0, 45, 12.5)
    assert s.throttled == ("under-voltage", "throttled")
    assert (s.infer_rate, s.latency_p95_ms, s.infer_errors, s.model) == (9.8, 5.0, 0, "ab" * 32)
    assert s.sources["gpu"] == "tegrastats"


def test_a_sample_without_gpu_or_model_server_has_nothing_invented() -> None:
    s = Sample.from_json({"type": "sample", "t": 5, "cpu": {"total": 3}, "gpu": None, "inference": None,
                          "mem": {"total_mb": 0, "used_mb": 0}, "load": "high"})
    assert s.cpu_pct == 3
    assert all(s.value(m) is None for m in METRICS if m != "cpu_pct")


@pytest.mark.parametrize("obj", [None, [], "x", {"type": "error", "t": 1}, {"cpu": {}}, {"t": "yesterday"},
                                 {"t": float("nan")}, {"t": True}])
def test_what_is_not_a_sample_is_refused(obj: object) -> None:
    with pytest.raises(SampleError):
        Sample.from_json(obj)


def test_a_ring_buffer_keeps_the_last_samples_in_order_and_its_memory_is_fixed() -> None:
    buf = RingBuffer(capacity=5)
    size = buf.nbytes()
    assert len(buf) == 0 and buf.times().size == 0 and buf.latest is None
    for i in range(13):
        buf.append(Sample(t=100.0 + i, cpu_pct=float(i), gpu_pct=None if i % 2 else 50.0))
        assert buf.nbytes() == size
    assert len(buf) == 5
    assert buf.times().tolist() == [108, 109, 110, 111, 112]
    assert buf.values("cpu_pct").tolist() == [8, 9, 10, 11, 12]
    gpu = buf.values("gpu_pct")
    assert gpu[0] == 50 and math.isnan(gpu[1])
    assert buf.values("cpu_pct", last=2).tolist() == [11, 12]
    t, v = buf.series("cpu_pct", since=110.5)
    assert t.tolist() == [111, 112] and v.tolist() == [11, 12]
    assert buf.latest is not None and buf.latest.t == 112
    # Reads are copies: a caller cannot change what the buffer holds.
    buf.values("cpu_pct")[:] = -1
    assert buf.values("cpu_pct").tolist() == [8, 9, 10, 11, 12]


def test_a_ring_buffer_read_across_its_wrap_point_and_before_it_fills() -> None:
    buf = RingBuffer(capacity=4)
    buf.append(Sample(t=1, cpu_pct=1))
    buf.append(Sample(t=2, cpu_pct=2))
    assert buf.values("cpu_pct").tolist() == [1, 2]
    for i in range(3, 7):
        buf.append(Sample(t=i, cpu_pct=i))
    assert np.array_equal(buf.times(), [3, 4, 5, 6])
    with pytest.raises(ValueError):
        RingBuffer(capacity=1)


def test_the_store_keeps_a_buffer_per_device_and_tells_its_listeners() -> None:
    store = TelemetryStore(capacity=3)
    heard: list[tuple[int, float]] = []
    stop = store.subscribe(lambda a: heard.append((a.device_id, a.sample.t)))
    store.add(1, Sample(t=1, cpu_pct=5))
    store.add(2, Sample(t=1, cpu_pct=6))
    store.add(1, Sample(t=2, cpu_pct=7))
    stop()
    store.add(1, Sample(t=3, cpu_pct=8))
    assert heard == [(1, 1), (2, 1), (1, 2)]
    assert sorted(store.devices()) == [1, 2]
    one = store.buffer(1)
    assert one is not None and one.values("cpu_pct").tolist() == [5, 7, 8]
    store.forget([1])
    assert store.buffer(1) is None and store.devices() == [2]
    assert store.nbytes() == store.buffer(2).nbytes()  # type: ignore[union-attr]
