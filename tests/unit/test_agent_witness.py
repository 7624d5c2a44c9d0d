"""`fleetdesk-agent witness`: a device keeps the audit checkpoints signed by its fleet key (and only those), the
newest few hundred, atomically, and never lets a second, different checkpoint of one entry replace the first.
The checkpoint's bytes are the laptop's (fleetdesk.chain.checkpoint_message), checked by the agent's own Ed25519."""

from __future__ import annotations

import base64
import hashlib
import json
import subprocess
import sys
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from fleetdesk import chain
from fleetdesk.agent import witness
from fleetdesk.agent.protocol import AgentError


@pytest.fixture
def root(tmp_path: Path) -> Path:
    (tmp_path / "keys").mkdir()
    return tmp_path


@pytest.fixture
def fleet_key(root: Path) -> Ed25519PrivateKey:
    key = Ed25519PrivateKey.generate()
    (root / "keys" / "fleet.pub").write_bytes(key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
    return key


def checkpoint(key: Ed25519PrivateKey, seq: int) -> tuple[int, str, str]:
    digest = hashlib.sha256(f"entry {seq}".encode()).hexdigest()
    return seq, digest, base64.b64encode(key.sign(chain.checkpoint_message(seq, digest))).decode()


def test_the_agent_and_the_laptop_sign_the_same_bytes() -> None:
    assert witness.message(7, "ab" * 32) == chain.checkpoint_message(7, "ab" * 32)


def test_a_checkpoint_is_kept_only_when_the_fleet_key_signed_it(root: Path, fleet_key: Ed25519PrivateKey) -> None:
    answer = witness.add(str(root), *checkpoint(fleet_key, 3))
    assert answer == {"seq": 3, "kept": 1, "newest": 3}
    seq, digest, _ = checkpoint(fleet_key, 4)
    other = Ed25519PrivateKey.generate()
    forged = base64.b64encode(other.sign(chain.checkpoint_message(seq, digest))).decode()
    with pytest.raises(AgentError) as refused:
        witness.add(str(root), seq, digest, forged)
    assert refused.value.code == "bad-signature"
    assert [c["seq"] for c in witness.stored(str(root))] == [3]


def test_the_newest_are_kept_and_a_witnessed_entry_is_never_replaced(root: Path,
                                                                      fleet_key: Ed25519PrivateKey) -> None:
    for seq in range(1, witness.KEEP + 11):
        witness.add(str(root), *checkpoint(fleet_key, seq))
    held = witness.stored(str(root))
    assert [c["seq"] for c in held] == list(range(11, witness.KEEP + 11))
    seq = witness.KEEP
    other_digest = hashlib.sha256(b"rewritten").hexdigest()
    signature = base64.b64encode(fleet_key.sign(chain.checkpoint_message(seq, other_digest))).decode()
    with pytest.raises(AgentError) as conflict:
        witness.add(str(root), seq, other_digest, signature)  # even signed by the fleet key
    assert conflict.value.code == "checkpoint-conflict"
    assert next(c for c in witness.stored(str(root)) if c["seq"] == seq)["hash"] == checkpoint(fleet_key, seq)[1]


def test_the_command_line_answers_in_json_lines(root: Path, fleet_key: Ed25519PrivateKey) -> None:
    seq, digest, signature = checkpoint(fleet_key, 9)

    def agent(*args: str) -> tuple[int, dict[str, object]]:
        proc = subprocess.run([sys.executable, "-m", "fleetdesk.agent", "--root", str(root), "witness", *args],
                              capture_output=True, text=True, timeout=60, check=False)
        return proc.returncode, json.loads(proc.stdout.splitlines()[-1])

    code, kept = agent("--seq", str(seq), "--hash", digest, "--signature", signature)
    assert code == 0 and kept["type"] == "result" and kept["seq"] == 9
    code, listed = agent("--list")
    assert code == 0 and listed["checkpoints"] == [{"seq": 9, "hash": digest, "signature": signature}]
    code, bad = agent("--seq", "9")
    assert code != 0 and bad["type"] == "error" and bad["code"] == "bad-arguments"
