"""The stored telemetry history and event log, on SQLite and on a real PostgreSQL: minutes written in batches and
merged, ranges read back, retention, events with whatever text a device sent, and TelemetryHistory end to end."""

from __future__ import annotations

import asyncio
import threading
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np
import pytest

from fleetdesk.errors import InventoryError
from fleetdesk.inventory import Inventory
from fleetdesk.inventory.telemetry_repo import HISTORY_METRICS, MinuteSummary, TelemetryRepo
from fleetdesk.telemetry.history import TelemetryHistory
from fleetdesk.telemetry.sample import Sample

T0 = datetime(2025, 11, 21, 8, 0, tzinfo=UTC)
HOSTILE = ("zone\x00nul \udcff lone surrogate \u241bu0041 escape-lookalike '; DROP TABLE events; -- "
           "<script>alert(1)</script> \x1b[31mred\x1b[0m\nsecond line")


def _summary(device_id: int, minute: datetime, samples: int, cpu: float | None, cpu_max: float | None = None,
             ) -> MinuteSummary:
    avg = dict.fromkeys(HISTORY_METRICS)
    high = dict.fromkeys(HISTORY_METRICS)
    avg["cpu_pct"], high["cpu_pct"] = cpu, cpu_max if cpu_max is not None else cpu
    return MinuteSummary(device_id, minute, samples, avg, high)


@pytest.fixture
def repo(inventory: Inventory) -> TelemetryRepo:
    return TelemetryRepo.of(inventory)


def test_minutes_are_written_and_read_back_by_range_oldest_first(inventory: Inventory, repo: TelemetryRepo) -> None:
    a, b = inventory.add_device("198.18.1.10"), inventory.add_device("198.18.1.11")
    rows = [_summary(a.id, T0 + timedelta(minutes=i), 60, float(i)) for i in (2, 0, 1, 3)]
    assert repo.write_minutes([*rows, _summary(b.id, T0, 10, 99.0)]) == 5
    got = repo.minutes(a.id, since=T0 + timedelta(minutes=1), until=T0 + timedelta(minutes=3))
    assert [(m.minute, m.avg["cpu_pct"]) for m in got] == [(T0 + timedelta(minutes=1), 1.0),
                                                           (T0 + timedelta(minutes=2), 2.0)]
    assert got[0].minute.tzinfo is not None and got[0].samples == 60 and got[0].avg["gpu_pct"] is None
    assert [m.avg["cpu_pct"] for m in repo.minutes(b.id)] == [99.0]
    assert len(repo.minutes(a.id)) == 4


def test_reports_read_averages_as_unix_minutes_and_maxima_per_device(inventory: Inventory,
                                                                     repo: TelemetryRepo) -> None:
    """What the health report reads in bulk: plain numbers, the same on both backends."""
    a, b = inventory.add_device("198.18.1.10"), inventory.add_device("198.18.1.11")
    repo.write_minutes([_summary(a.id, T0 + timedelta(minutes=i), 60, float(i), float(i) + 5) for i in (0, 1, 3)]
                       + [_summary(b.id, T0, 10, None)])
    until = T0 + timedelta(minutes=3)
    start = int(T0.timestamp())
    first, second = repo.histories([a.id, b.id], ["cpu_pct", "temp_c"], T0, until)
    assert first.minutes.tolist() == [start, start + 60] and first.averages["cpu_pct"].tolist() == [0.0, 1.0]
    assert "temp_c" not in first.averages  # never measured: not read at all
    assert first.maxima == {"cpu_pct": 6.0, "temp_c": None}
    assert second.minutes.tolist() == [start] and second.averages == {}
    assert second.maxima == {"cpu_pct": None, "temp_c": None}
    with pytest.raises(ValueError, match="no history is kept of disk_pct"):
        list(repo.histories([a.id], ["disk_pct"], T0, until))


def test_reports_read_the_minutes_of_a_history_with_gaps_and_unmeasured_minutes(inventory: Inventory,
                                                                              repo: TelemetryRepo) -> None:
    """A device whose rows cover every minute from its first to its last is read without its times; one with
    gaps is read with them; a metric missing from some minutes is NaN there on both."""
    gappy, steady = inventory.add_device("198.18.1.10"), inventory.add_device("198.18.1.11")
    gappier = inventory.add_device("198.18.1.12")
    kept = (0, 3, 4, 5, 9, 20, 21, 59)
    rows = [_summary(gappy.id, T0 + timedelta(minutes=i), 60, float(i)) for i in (1, 2, 4, 5)]
    rows += [_summary(gappier.id, T0 + timedelta(minutes=i), 60, float(i)) for i in kept]
    rows += [_summary(steady.id, T0 + timedelta(minutes=i), 60, None if i == 2 else float(i)) for i in range(1, 5)]
    temp = MinuteSummary(steady.id, T0 + timedelta(minutes=3), 60, {"temp_c": 50.0}, {"temp_c": 51.0})
    repo.write_minutes([*rows, temp])
    start = int(T0.timestamp())
    first, second = repo.histories([gappy.id, steady.id], ["cpu_pct", "temp_c"], T0, T0 + timedelta(hours=1))
    assert first.minutes.tolist() == [start + 60 * i for i in (1, 2, 4, 5)]
    assert first.averages["cpu_pct"].tolist() == [1.0, 2.0, 4.0, 5.0] and "temp_c" not in first.averages
    assert second.minutes.tolist() == [start + 60 * i for i in range(1, 5)]
    cpu, temp_c = second.averages["cpu_pct"], second.averages["temp_c"]
    assert np.isnan(cpu[1]) and cpu[[0, 2, 3]].tolist() == [1.0, 3.0, 4.0]
    assert np.isnan(temp_c[[0, 1, 3]]).all() and temp_c[2] == 50.0
    assert second.maxima == {"cpu_pct": 4.0, "temp_c": 51.0}
    [third] = repo.histories([gappier.id], ["cpu_pct"], T0, T0 + timedelta(hours=1))
    assert third.minutes.tolist() == [start + 60 * i for i in kept]
    assert third.averages["cpu_pct"].tolist() == [float(i) for i in kept]
    [part] = repo.histories([gappier.id], ["cpu_pct"], T0 + timedelta(minutes=4), T0 + timedelta(minutes=21))
    assert part.minutes.tolist() == [start + 60 * i for i in (4, 5, 9, 20)]


def test_a_minute_written_twice_is_merged_not_duplicated(inventory: Inventory, repo: TelemetryRepo) -> None:
    device = inventory.add_device("198.18.1.10")
    repo.write_minutes([_summary(device.id, T0 + timedelta(seconds=30), 30, 10.0, 20.0)])  # stored at its minute
    repo.write_minutes([_summary(device.id, T0, 10, 50.0, 80.0)])
    [minute] = repo.minutes(device.id)
    assert (minute.minute, minute.samples, minute.avg["cpu_pct"], minute.max["cpu_pct"]) == (T0, 40, 20.0, 80.0)


def test_two_laptops_streaming_one_device_keep_each_minute_once(inventory: Inventory) -> None:
    """A shared inventory: two laptops (two writers) stream the same device. Each minute is kept as the first to
    write it saw it; the other's summary of that minute is not added to it (that would count samples twice)."""
    device = inventory.add_device("198.18.1.12")
    laptop_a = TelemetryRepo(inventory.engine, writer="laptop-a:11")
    laptop_b = TelemetryRepo(inventory.engine, writer="laptop-b:22")
    assert laptop_a.write_minutes([_summary(device.id, T0, 30, 10.0, 20.0)]) == 1
    assert laptop_b.write_minutes([_summary(device.id, T0, 30, 90.0, 95.0),
                                   _summary(device.id, T0 + timedelta(minutes=1), 60, 40.0, 45.0)]) == 1
    assert laptop_a.write_minutes([_summary(device.id, T0, 30, 30.0, 40.0)]) == 1  # its own minute: merged
    first, second = laptop_b.minutes(device.id)
    assert (first.samples, first.avg["cpu_pct"], first.max["cpu_pct"]) == (60, 20.0, 40.0)
    assert (second.minute, second.samples, second.avg["cpu_pct"]) == (T0 + timedelta(minutes=1), 60, 40.0)


def test_minutes_of_removed_devices_are_dropped_and_go_with_the_device(inventory: Inventory,
                                                                      repo: TelemetryRepo) -> None:
    kept, removed = inventory.add_device("198.18.1.10"), inventory.add_device("198.18.1.11")
    repo.write_minutes([_summary(kept.id, T0, 1, 1.0), _summary(removed.id, T0, 1, 1.0)])
    repo.log_event(removed.id, "alert", "hot")
    inventory.remove(removed.id)
    assert repo.minutes(removed.id) == [] and repo.events(removed.id) == []
    # A stream still running for the removed device: its minute and event are dropped, the rest stored.
    assert repo.write_minutes([_summary(removed.id, T0, 1, 1.0), _summary(kept.id, T0, 1, 3.0)]) == 1
    assert repo.log_events([(removed.id, "stream", "lost", None, None, None, None)]) == [-1]
    assert repo.minutes(kept.id)[0].samples == 2


def test_retention_deletes_only_what_is_older(inventory: Inventory, repo: TelemetryRepo) -> None:
    device = inventory.add_device("198.18.1.10")
    repo.write_minutes([_summary(device.id, T0 + timedelta(days=d), 1, 1.0) for d in (0, 10, 31)])
    repo.log_event(device.id, "alert", "old", at=T0)
    repo.log_event(device.id, "alert", "new", at=T0 + timedelta(days=31))
    assert repo.prune(T0 + timedelta(days=1)) == (1, 1)
    assert [m.minute for m in repo.minutes(device.id)] == [T0 + timedelta(days=10), T0 + timedelta(days=31)]
    assert [e.message for e in repo.events(device.id)] == ["new"]


def test_events_keep_hostile_text_exactly_and_list_newest_first(inventory: Inventory, repo: TelemetryRepo) -> None:
    device = inventory.add_device("198.18.1.10")
    first = repo.log_event(device.id, "alert", HOSTILE, metric="temp_c", value=91.5, bound=85.0, at=T0)
    second = repo.log_event(None, "stream", "fleet-wide", at=T0 + timedelta(minutes=1))
    third = repo.log_event(device.id, HOSTILE, "kind is free text", at=T0 + timedelta(minutes=2))
    assert first < second < third
    events = repo.events()
    assert [e.id for e in events] == [third, second, first]
    alert = events[-1]
    assert (alert.message, alert.metric, alert.value, alert.bound, alert.at) == (HOSTILE, "temp_c", 91.5, 85.0, T0)
    assert events[0].kind == HOSTILE and events[1].device_id is None
    assert [e.id for e in repo.events(device.id)] == [third, first]
    assert [e.id for e in repo.events(since=T0 + timedelta(minutes=1))] == [third, second]
    assert [e.id for e in repo.events(limit=1)] == [third]


def test_an_event_without_a_kind_is_refused_and_nothing_is_stored(inventory: Inventory, repo: TelemetryRepo) -> None:
    with pytest.raises(InventoryError):
        repo.log_events([(None, "alert", "fine", None, None, None, None), (None, "", "no kind", None, None, None,
                                                                          None)])
    assert repo.events() == []


def test_naive_times_are_refused(inventory: Inventory, repo: TelemetryRepo) -> None:
    with pytest.raises(ValueError):
        repo.minutes(1, since=datetime(2025, 1, 1))


class Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def test_the_history_writes_finished_minutes_in_batches_and_the_rest_on_close(inventory: Inventory) -> None:
    device = inventory.add_device("198.18.1.10")
    t0 = T0.timestamp()
    clock = Clock(t0)

    async def go() -> None:
        history = TelemetryHistory.open(inventory, flush_every=3600, clock=clock)
        for i in range(150):  # 2.5 minutes at 1 Hz; CPU = the second within the minute
            history.add(device.id, Sample(t=t0 + i, cpu_pct=float(i % 60), temp_c=40.0 + i // 60))
        clock.now = t0 + 150
        # Minutes 0 and 1 are over (the device sent samples of a later minute); minute 2 is still open.
        assert await history.flush() == 2
        assert [(m.samples, m.avg["cpu_pct"], m.max["cpu_pct"], m.max["temp_c"])
                for m in history.history(device.id)] == [(60, 29.5, 59.0, 40.0), (60, 29.5, 59.0, 41.0)]
        assert history.pending() == 1
        await history.close()
        assert [m.samples for m in history.history(device.id)] == [60, 60, 30]

        # A later run continues the same minute: its samples are merged into the stored row.
        again = TelemetryHistory.open(inventory, flush_every=3600, clock=clock)
        for i in range(150, 160):
            again.add(device.id, Sample(t=t0 + i, cpu_pct=float(i % 60)))
        await again.close()
        assert [m.samples for m in again.history(device.id)] == [60, 60, 40]
    asyncio.run(go())


def test_a_minute_is_written_after_its_grace_even_if_the_device_goes_quiet(inventory: Inventory) -> None:
    device = inventory.add_device("198.18.1.10")
    t0 = T0.timestamp()
    clock = Clock(t0 + 30)

    async def go() -> None:
        history = TelemetryHistory.open(inventory, flush_every=3600, grace=5, clock=clock)
        history.add(device.id, Sample(t=t0 + 10, cpu_pct=5.0))
        assert await history.flush() == 0
        clock.now = t0 + 66
        assert await history.flush() == 1
        await history.close()
        assert [m.samples for m in history.history(device.id)] == [1]
    asyncio.run(go())


def test_the_history_prunes_on_start_and_posts_events_with_its_batches(inventory: Inventory) -> None:
    device = inventory.add_device("198.18.1.10")
    repo = TelemetryRepo.of(inventory)
    now = T0 + timedelta(days=40)
    repo.write_minutes([_summary(device.id, T0, 1, 1.0), _summary(device.id, now - timedelta(days=2), 1, 1.0)])

    async def go() -> None:
        history = TelemetryHistory.open(inventory, retention=timedelta(days=7), flush_every=0.05,
                                        clock=Clock(now.timestamp()))
        history.post_event(device.id, "stream", HOSTILE)  # starts the writer, which prunes first
        for _ in range(200):
            if history.events(device.id):
                break
            await asyncio.sleep(0.05)
        await history.close()
        assert [m.minute for m in history.history(device.id)] == [now - timedelta(days=2)]
        assert [(e.kind, e.message) for e in history.events(device.id)] == [("stream", HOSTILE)]
    asyncio.run(go())


def test_log_event_returns_the_stored_id(inventory: Inventory) -> None:
    device = inventory.add_device("198.18.1.10")
    history = TelemetryHistory.open(inventory)
    event_id = history.log_event(device.id, "alert", "CPU above 90 % for 30 s", metric="cpu_pct", value=97.0,
                                 bound=90.0)
    [event] = history.events(device.id)
    assert event.id == event_id and event.metric == "cpu_pct" and event.at.tzinfo is not None


def _reference(repo: TelemetryRepo, device_id: int, metrics: list[str], since: datetime, until: datetime,
               ) -> tuple[list[float], dict[str, list[float | None]], dict[str, float | None]]:
    """What the stored minutes say of a period, read row by row: the figures the packed hours must give."""
    rows = repo.minutes(device_id, since, until)
    highs = {m: max((r.max[m] for r in rows if r.max[m] is not None), default=None) for m in metrics}
    return ([r.minute.timestamp() for r in rows],
            {m: [r.avg[m] for r in rows] for m in metrics if highs[m] is not None}, highs)


def _as_read(history: Any) -> tuple[list[float], dict[str, list[float | None]], dict[str, float | None]]:
    return (history.minutes.tolist(), {m: [None if np.isnan(v) else float(v) for v in values]
                                       for m, values in history.averages.items()}, history.maxima)


def test_the_packed_hours_give_what_the_minutes_say_over_any_period(inventory: Inventory,
                                                                    repo: TelemetryRepo) -> None:
    """Three days of three devices with gaps, minutes without a metric, a metric measured only some hours, a minute
    written twice and a retention cut inside an hour: every period read from the packed hours (whole hours, hours
    cut at either end, one hour, one minute) has the minutes, averages and maxima the rows say."""
    rng = np.random.default_rng(7)
    devices = [inventory.add_device(f"198.18.1.{20 + n}").id for n in range(3)]
    metrics = ["cpu_pct", "temp_c", "gpu_pct", "latency_p95_ms"]
    rows = []
    for n, device in enumerate(devices):
        for i in range(3 * 24 * 60):
            if rng.random() < 0.1 * n or (n == 1 and 300 <= i < 500):
                continue  # gaps, and a long outage on the second device
            avg = dict.fromkeys(HISTORY_METRICS)
            high = dict.fromkeys(HISTORY_METRICS)
            for m in metrics:
                if m == "gpu_pct" and (n != 2 or (i // 60) % 3):
                    continue  # a GPU on the third device only, measured one hour in three
                if rng.random() < 0.05:
                    continue  # a minute without this metric
                value = round(float(rng.normal(50, 15)), 3)
                avg[m], high[m] = value, value + round(float(rng.random()) * 10, 3)
            rows.append(MinuteSummary(device, T0 + timedelta(minutes=i, seconds=5), 30, avg, high))
    for start in range(0, len(rows), 5000):  # in batches, as the live writer adds them
        repo.write_minutes(rows[start:start + 5000])
    again = rows[100]  # a stream restarted within a minute: merged into the stored row and its hour
    repo.write_minutes([MinuteSummary(again.device_id, again.minute, 30, {"cpu_pct": 99.5}, {"cpu_pct": 120.0})])
    periods = [(T0, T0 + timedelta(days=3)), (T0 + timedelta(minutes=7), T0 + timedelta(days=2, minutes=33)),
               (T0 + timedelta(hours=5), T0 + timedelta(hours=6)),
               (T0 + timedelta(hours=5, minutes=10), T0 + timedelta(hours=5, minutes=50)),
               (T0 + timedelta(minutes=101), T0 + timedelta(minutes=102)), (T0 - timedelta(days=1), T0)]

    def check() -> None:
        for since, until in periods:
            got = repo.histories(devices, metrics, since, until)
            for device, history in zip(devices, got, strict=True):
                assert _as_read(history) == _reference(repo, device, metrics, since, until), (device, since, until)

    check()
    repo.prune(T0 + timedelta(hours=30, minutes=17))  # the hour the cut falls in keeps only its later minutes
    check()
    [cut] = repo.histories([devices[0]], metrics, T0, T0 + timedelta(days=3))
    assert cut.minutes[0] >= (T0 + timedelta(hours=30, minutes=17)).timestamp()


def test_two_laptops_writing_one_device_at_once_leave_its_hours_whole(inventory: Inventory) -> None:
    """Four writers adding alternate minutes of the same device and hours at the same time (laptops on one shared
    inventory): writers take turns, so each packs the hour from the minutes the others committed before it, and
    the packed hours lose none of them."""
    device = inventory.add_device("198.18.1.30").id
    laptops = [TelemetryRepo(inventory.engine, writer=f"laptop-{n}:1") for n in range(4)]
    barrier = threading.Barrier(4)

    def stream(n: int) -> None:
        for i in range(n, 240, 4):
            barrier.wait(timeout=30)  # every writer starts its transaction together
            laptops[n].write_minutes([_summary(device, T0 + timedelta(minutes=i), 60, float(i))])

    with ThreadPoolExecutor(4) as pool:
        list(pool.map(stream, range(4)))
    [history] = laptops[0].histories([device], ["cpu_pct"], T0, T0 + timedelta(hours=4))
    assert history.averages["cpu_pct"].tolist() == [float(i) for i in range(240)]
