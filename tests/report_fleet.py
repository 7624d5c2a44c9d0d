"""A small fleet for the report tests, built through the real repositories on a real SQLite inventory: devices
heard by mDNS under hostile names, probed, grouped, trusted, provisioned, one with a password in the real
keyring; a day of per-minute telemetry with an outage; alerts; a finished rollout with gate measurements and a
rolled-back device; signed audit entries."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from fleetdesk.access import Access
from fleetdesk.fleet import Fleet
from fleetdesk.inventory import Inventory, ProbeFacts, Sighting
from fleetdesk.inventory import rollout_states as st
from fleetdesk.inventory.rollouts import RolloutRepo
from fleetdesk.inventory.runtimes import DeviceRuntimes
from fleetdesk.inventory.telemetry_repo import HISTORY_METRICS, MinuteSummary, TelemetryRepo
from fleetdesk.rollout.plan import PlannedDevice, ResolvedPlan, RolloutPlan
from fleetdesk.rollout.policy import WavePolicy

T0 = datetime(2026, 11, 30, 0, 0, tzinfo=UTC)  # the day of telemetry starts here
DAY = timedelta(days=1)
LABEL_63 = "assembly-line-7-station-42-left-camera-inference-node-012345678"
HOSTILE = ("cell3 $(touch /tmp/x); rm -rf ~ `id`", "<script>alert(1)</script>", "Prüfstand Linie 4 — Kamera ✓",
           LABEL_63, "=HYPERLINK(\"http://198.51.100.9/x\",\"ok\")", "-2+3", "@SUM(1)")
SECRET = "hunter2-not-in-any-report"
NEW_ARTIFACT, OLD_ARTIFACT = "a1" * 32, "b2" * 32
OUTAGE = (T0 + timedelta(hours=6), T0 + timedelta(hours=8))  # the first device sent nothing in these two hours


@dataclass(frozen=True)
class ReportFleet:
    url: str
    names: tuple[str, ...]
    rollout_id: int
    host_keys: dict[str, str]  # device name -> fingerprint


def _public_key() -> str:
    key = Ed25519PrivateKey.generate().public_key()
    return key.public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH).decode()


def build_report_fleet(url: str, *, minutes: bool = True) -> ReportFleet:
    fleet = Fleet.open(url)
    inventory: Inventory = fleet.inventory
    try:
        devices = []
        for n, name in enumerate(HOSTILE):
            device = inventory.record_sighting(Sighting("mdns", (f"192.0.2.{n + 10}",), instance_name=name,
                                                        service_type="_ssh._tcp.local.", seen_at=T0))
            assert device.name == name
            device = inventory.save_probe(device.id, ProbeFacts(
                hostname=f"host{n}", arch="aarch64" if n % 2 else "x86_64", os_name="Debian GNU/Linux 12 (bookworm)",
                cpu_count=4, ram_mb=4096), profile="rpi4" if n % 2 else "ipc-x86")
            devices.append(device)
        ids = [d.id for d in devices]
        inventory.add_to_group("line A", ids[:3])
        inventory.add_to_group("Linie B — Prüfung", ids[2:5])
        keys = {}
        for d in devices[:4]:
            keys[d.name] = inventory.pin_host_key(d.id, _public_key()).fingerprint
        for d in devices[:3]:
            DeviceRuntimes(inventory).record(d.id, runtime_id="c" * 64, agent_version="0.1.0",
                                             device_root="/opt/fleetdesk", onnxruntime="1.20.1",
                                             providers=["CPUExecutionProvider"], python="3.11.2", at=T0)
        asyncio.run(fleet.set_login(devices[0], username="fleet", password=SECRET))
        for d in devices[:5]:
            inventory.record_sighting(Sighting("mdns", (d.address,), instance_name=d.name,
                                               service_type="_ssh._tcp.local.", seen_at=T0 + DAY))
            inventory.set_online(d.id, True)
        telemetry = TelemetryRepo.of(inventory)
        if minutes:
            rows = []
            for i in range(24 * 60):
                at = T0 + timedelta(minutes=i)
                for k, d in enumerate(devices[:4]):
                    if k == 0 and OUTAGE[0] <= at < OUTAGE[1]:
                        continue
                    load = 10.0 + k * 10 + (i % 60) / 6
                    avg = {m: None for m in HISTORY_METRICS}
                    avg.update(cpu_pct=load, mem_pct=40.0 + k, temp_c=50.0 + k, latency_p95_ms=5.0 + k + (i % 10))
                    if k == 2:  # the third device's model scores input drift: its inputs moved in the last hour
                        drifted = i >= 23 * 60
                        avg.update(drift_psi=0.4 if drifted else 0.02, drift_shift_sd=2.0 if drifted else 0.1)
                    high = {m: (v + 1.0 if v is not None else None) for m, v in avg.items()}
                    rows.append(MinuteSummary(d.id, at, 12, avg, high))
            telemetry.write_minutes(rows)
        telemetry.log_event(ids[1], "alert", "temperature 91 °C over 85 °C on <script>alert(1)</script>",
                            metric="temp_c", value=91.0, bound=85.0, at=T0 + timedelta(hours=3))
        telemetry.log_event(ids[0], "stream", "telemetry stream lost: connection reset", at=OUTAGE[0])

        repo = RolloutRepo(inventory)
        planned = tuple(PlannedDevice(d.id, d.name, d.profile or "", NEW_ARTIFACT, "int8-dynamic",
                                      0 if i == 0 else 1, 123456) for i, d in enumerate(devices[:3]))
        plan = RolloutPlan("cnn@2", devices=tuple(ids[:3]), policy=WavePolicy(errors="10%"), takeover="auto")
        resolved = ResolvedPlan(plan, "cnn@2", planned, ((ids[0],), (ids[1], ids[2])))
        rollout = repo.create(resolved, "admin-op")
        # laptop-a drove it and stopped; laptop-b took it over once the lease ran out (journaled by take_lease).
        repo.take_lease(rollout.id, "laptop-a:100", 0.01)
        time.sleep(0.05)
        repo.take_lease(rollout.id, "laptop-b:200", 30)
        gates = {"baseline": {"p95_ms": 10.0}, "passed": True, "reason": "", "samples": 3,
                 "values": {"p95_ratio": {"value": 1.12, "bound": 1.5, "ok": True},
                            "temperature_c": {"value": 61.0, "bound": 85.0, "ok": True}}}
        for d in devices[:2]:
            for event in (st.STAGE, st.STAGED_OK, st.ACTIVATE, st.ACTIVATED, st.PASSED, st.CONFIRMED):
                repo.record(rollout.id, d.id, event, previous_artifact=OLD_ARTIFACT, bytes_sent=123456,
                            gates=gates)
        for event in (st.STAGE, st.STAGED_OK, st.ACTIVATE, st.ACTIVATED):
            repo.record(rollout.id, ids[2], event, previous_artifact=OLD_ARTIFACT, bytes_sent=123456)
        failed = {**gates, "passed": False, "reason": "p95 ratio 2.4 over 1.5",
                  "values": {"p95_ratio": {"value": 2.4, "bound": 1.5, "ok": False}}}
        repo.record(rollout.id, ids[2], st.GATES_FAILED, gates=failed, error="p95 ratio 2.4 over 1.5")
        repo.record(rollout.id, ids[2], st.ROLLED_BACK_OK)
        repo.set_status(rollout.id, "done")
        access = Access(inventory)
        access.record("rollout.approve", targets=(f"rollout:{rollout.id}", f"device:{ids[1]}"),
                      after={"wave": 2, "note": HOSTILE[1]})
        return ReportFleet(url, tuple(HOSTILE), rollout.id, keys)
    finally:
        asyncio.run(fleet.close())
