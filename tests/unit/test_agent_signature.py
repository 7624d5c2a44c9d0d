"""The agent's own Ed25519 verification (pure Python, for devices without `cryptography`) and the signature check
that activation runs: RFC 8032 test vectors, agreement with `cryptography` on random keys and messages, every
flipped bit refused, and each way an artifact's signature can be unusable gives its own error and fix."""

from __future__ import annotations

import base64
import os
import random
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from fleetdesk.agent import ed25519, state
from fleetdesk.agent.protocol import AgentError
from tests.fixtures.signed import signed_artifact

# RFC 8032 section 7.1, TEST 1-3: (secret key, public key, message, signature), all hex.
RFC8032_VECTORS = [
    ("9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60",
     "d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a", "",
     "e5564300c360ac729086e2cc806e828a84877f1eb8e5d974d873e065224901555fb8821590a33bacc61e39701cf9b46bd25bf5f0595bbe"
     "24655141438e7a100b"),
    ("4ccd089b28ff96da9db6c346ec114e0f5b8a319f35aba624da8cf6ed4fb8a6fb",
     "3d4017c3e843895a92b70aa74d1b7ebc9c982ccf2ec4968cc0cd55f12af4660c", "72",
     "92a009a9f0d4cab8720e820b5f642540a2b27b5416503f8fb3762223ebdb69da085ac1e43e15996e458f3613d0f11d8c387b2eaeb4302a"
     "eeb00d291612bb0c00"),
    ("c5aa8df43f9f837bedb7442f31dcb7b166d38535076f094b85ce3a2e0b4458f7",
     "fc51cd8e6218a1a38da47ed00230f0580816ed13ba3303ac5deb911548908025", "af82",
     "6291d657deec24024827e69c3abe01a30ce548a284743a445e3680d7db5ac3ac18ff9b538d16f290ae67f760984dc6594a7c15e9716ed2"
     "8dc027beceea1ec40a"),
]


def pem(key: Ed25519PrivateKey) -> bytes:
    return key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)


def raw(key: Ed25519PrivateKey) -> bytes:
    return key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


@pytest.mark.parametrize(("secret", "public", "message", "signature"), RFC8032_VECTORS)
def test_rfc8032_vectors_verify_and_any_change_does_not(secret: str, public: str, message: str,
                                                        signature: str) -> None:
    key, msg, sig = bytes.fromhex(public), bytes.fromhex(message), bytes.fromhex(signature)
    assert ed25519.verify(key, msg, sig)
    assert not ed25519.verify(key, msg + b"\0", sig)
    assert not ed25519.verify(key, msg, sig[:63] + bytes([sig[63] ^ 0x01]))
    assert not ed25519.verify(bytes([key[0] ^ 0x01]) + key[1:], msg, sig)
    # The secret key is RFC 8032's: cryptography derives the same public key from it.
    assert raw(Ed25519PrivateKey.from_private_bytes(bytes.fromhex(secret))) == key


def test_agrees_with_cryptography_on_random_keys_and_messages_and_refuses_every_flipped_bit() -> None:
    rng = random.Random(8032)
    for _ in range(12):
        key = Ed25519PrivateKey.generate()
        message = rng.randbytes(rng.randrange(0, 3000))
        signature = key.sign(message)
        assert ed25519.verify(raw(key), message, signature)
        assert ed25519.public_key_from_pem(pem(key)) == raw(key)
        bit = rng.randrange(len(signature) * 8)
        flipped = bytearray(signature)
        flipped[bit // 8] ^= 1 << (bit % 8)
        assert not ed25519.verify(raw(key), message, bytes(flipped))
        if message:
            bit = rng.randrange(len(message) * 8)
            changed = bytearray(message)
            changed[bit // 8] ^= 1 << (bit % 8)
            assert not ed25519.verify(raw(key), bytes(changed), signature)
        assert not ed25519.verify(raw(Ed25519PrivateKey.generate()), message, signature)  # another key


def test_a_non_canonical_s_and_wrong_lengths_are_refused() -> None:
    key = Ed25519PrivateKey.generate()
    signature = key.sign(b"m")
    s = int.from_bytes(signature[32:], "little")
    # S + L verifies the same equation, but RFC 8032 5.1.7 requires S < L (no malleable second signature).
    assert not ed25519.verify(raw(key), b"m", signature[:32] + (s + ed25519.L).to_bytes(32, "little"))
    assert not ed25519.verify(raw(key), b"m", signature[:63])
    assert not ed25519.verify(raw(key)[:31], b"m", signature)


@pytest.mark.parametrize(("text", "words"), [
    (b"ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIL fleet\n", "not a PEM public key"),
    (b"-----BEGIN PUBLIC KEY-----\n!!!!\n-----END PUBLIC KEY-----\n", "not valid base64"),
    (b"\xff\xfe", "not PEM text"),
])
def test_malformed_keys_are_refused(text: bytes, words: str) -> None:
    with pytest.raises(ed25519.InvalidKey, match=words):
        ed25519.public_key_from_pem(text)


def test_an_rsa_or_p256_key_is_not_taken_for_an_ed25519_key() -> None:
    from cryptography.hazmat.primitives.asymmetric import ec

    other = ec.generate_private_key(ec.SECP256R1()).public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    with pytest.raises(ed25519.InvalidKey, match="not an Ed25519 public key"):
        ed25519.public_key_from_pem(other)


# --- check_signature / verify_artifact on an artifact folder ------------------------------------------------------

def make_artifact(root: Path, key: Ed25519PrivateKey, payload: bytes = b"model", *, write_key: bool = True) -> str:
    return signed_artifact(root, key, payload, model="m.onnx", write_key=write_key)


def refused(root: Path, sha: str) -> AgentError:
    with pytest.raises(AgentError) as caught:
        state.verify_artifact(str(root), sha)
    assert caught.value.message and caught.value.fix
    return caught.value


def test_a_signed_artifact_is_valid(tmp_path: Path) -> None:
    sha = make_artifact(tmp_path, Ed25519PrivateKey.generate())
    assert state.verify_artifact(str(tmp_path), sha) == {"manifest": True, "files_checked": 1, "signature": "valid"}


def test_no_signature_file(tmp_path: Path) -> None:
    sha = make_artifact(tmp_path, Ed25519PrivateKey.generate())
    (tmp_path / "artifacts" / sha / "manifest.json.sig").unlink()
    err = refused(tmp_path, sha)
    assert err.code == "bad-signature" and "has no signature" in err.message


def test_no_fleet_key_on_the_device(tmp_path: Path) -> None:
    sha = make_artifact(tmp_path, Ed25519PrivateKey.generate(), write_key=False)
    err = refused(tmp_path, sha)
    assert err.code == "bad-signature" and "no fleet key" in err.message and "provision" in err.fix


def test_a_malformed_fleet_key(tmp_path: Path) -> None:
    sha = make_artifact(tmp_path, Ed25519PrivateKey.generate())
    (tmp_path / "keys" / "fleet.pub").write_text("ssh-ed25519 AAAA fleet\n")
    err = refused(tmp_path, sha)
    assert err.code == "bad-signature" and "is malformed" in err.message


def test_a_signature_by_another_key_or_of_another_manifest(tmp_path: Path) -> None:
    sha = make_artifact(tmp_path, Ed25519PrivateKey.generate())
    (tmp_path / "keys" / "fleet.pub").write_bytes(pem(Ed25519PrivateKey.generate()))  # another laptop's key
    err = refused(tmp_path, sha)
    assert err.code == "bad-signature" and "does not match" in err.message
    key = Ed25519PrivateKey.generate()
    other = tmp_path / "other"
    sha = make_artifact(other, key)
    signature = tmp_path / "other" / "artifacts" / sha / "manifest.json.sig"
    signature.write_bytes(base64.b64encode(key.sign(b"another manifest")) + b"\n")
    assert refused(other, sha).code == "bad-signature"
    signature.write_text("not base64 at all\n")
    err = refused(other, sha)
    assert err.code == "bad-signature" and "not a base64 Ed25519 signature" in err.message


def test_a_signed_manifest_in_a_folder_of_another_id_is_refused(tmp_path: Path) -> None:
    sha = make_artifact(tmp_path, Ed25519PrivateKey.generate())
    moved = "f" * 64
    os.rename(tmp_path / "artifacts" / sha, tmp_path / "artifacts" / moved)
    err = refused(tmp_path, moved)
    assert err.code == "bad-artifact" and "not the artifact's id" in err.message


def test_an_artifact_without_a_manifest_is_refused(tmp_path: Path) -> None:
    folder = tmp_path / "artifacts" / ("a" * 64)
    folder.mkdir(parents=True)
    (folder / "model.onnx").write_bytes(b"unsigned")
    err = refused(tmp_path, "a" * 64)
    assert err.code == "bad-artifact" and "no manifest.json" in err.message
