"""The fleet key a device already trusts, and the read-only trees of a device provisioned as root: provisioning's
decision about another key, and the device-side scripts (state, seal, staging's space check) run here for real.
"""

from __future__ import annotations

import base64
import json
import os
import stat
import subprocess
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from fleetdesk.artifacts.store_records import key_fingerprint
from fleetdesk.errors import FleetKeyMismatchError
from fleetdesk.rollout import device_ops
from fleetdesk.runtime import provision_scripts as scripts
from fleetdesk.runtime.fleetkey import check_fleet_key, device_fleet_pub, fleet_key_fingerprint
from fleetdesk.runtime.sealing import seal_command, sealed_folders
from fleetdesk.transport.shell import python_command
from tests.conftest import skip_or_fail

NOBODY = 65534


def new_pem() -> bytes:
    return Ed25519PrivateKey.generate().public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)


def sh(command: str, *, as_nobody: bool = False) -> subprocess.CompletedProcess[str]:
    """A command line exactly as a device's login shell gets it (as an unprivileged user when asked)."""
    argv = ["sh", "-c", command]
    if as_nobody:
        argv = ["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups", *argv]
    return subprocess.run(argv, capture_output=True, text=True, timeout=120, check=False)


def require_root() -> None:
    # Only root can give files to root: sealing is proven where the tests run as root (CI does).
    if os.geteuid() != 0:
        skip_or_fail("sealing needs root (chown to root); run the tests as root")


def modes(top: Path) -> dict[str, tuple[int, int, int]]:
    """(uid, gid, permission bits) of everything under `top`, by path relative to it."""
    out = {".": (top.stat().st_uid, top.stat().st_gid, stat.S_IMODE(top.stat().st_mode))}
    for path in top.rglob("*"):
        st = path.lstat()
        out[str(path.relative_to(top))] = (st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode))
    return out


# -- the decision ---------------------------------------------------------------------------------------------


def test_a_device_with_no_key_or_this_laptops_key_needs_no_decision() -> None:
    laptop = new_pem()
    assert check_fleet_key(None, laptop, replace=False, device="gpc-01") is None
    assert check_fleet_key(laptop, laptop, replace=False, device="gpc-01") is None
    # The same key written with other line ends is the same key: nothing to ask the operator.
    assert check_fleet_key(laptop.replace(b"\n", b"\r\n"), laptop, replace=False, device="gpc-01") is None


def test_another_key_is_refused_naming_both_fingerprints_and_the_fix() -> None:
    laptop, other = new_pem(), new_pem()
    with pytest.raises(FleetKeyMismatchError) as caught:
        check_fleet_key(other, laptop, replace=False, device="gpc 01")
    error = caught.value
    old, new = key_fingerprint(other), key_fingerprint(laptop)
    assert old != new and old.startswith("SHA256:")
    assert (error.device_key, error.laptop_key) == (old, new)
    assert f"trusts another fleet key ({old}) than this laptop's ({new})" in error.message
    assert "nothing was changed on it" in error.message
    assert error.device == "gpc 01" and error.step == "check fleet key"
    assert error.fix is not None and "`fleetdesk provision 'gpc 01' --replace-fleet-key`" in error.fix
    assert old in error.fix  # or go to the laptop that holds the old key
    data = error.to_dict()
    assert data["code"] == "fleet-key-differs" and data["device_key"] == old and data["laptop_key"] == new
    assert data["error"] == "FleetKeyMismatchError"


def test_with_replace_the_other_key_is_replaced_and_the_outcome_says_which_by_which() -> None:
    laptop, other = new_pem(), new_pem()
    note = check_fleet_key(other, laptop, replace=True, device="gpc-01")
    assert note == f"replaced the fleet key {key_fingerprint(other)} with {key_fingerprint(laptop)}"


def test_a_key_file_that_holds_no_key_is_refused_too_and_named_by_its_bytes() -> None:
    laptop = new_pem()
    with pytest.raises(FleetKeyMismatchError) as caught:
        check_fleet_key(b"not a key\n", laptop, replace=False, device="gpc-01")
    assert caught.value.device_key.endswith("(of a file that holds no public key)")
    assert fleet_key_fingerprint(b"not a key\n").startswith("SHA256:")


def test_the_state_scripts_base64_is_read_back_and_anything_else_means_no_key() -> None:
    pem = new_pem()
    assert device_fleet_pub(base64.b64encode(pem).decode()) == pem
    assert device_fleet_pub(None) is None
    assert device_fleet_pub("not base64!") is None
    assert device_fleet_pub(42) is None


# -- the device side --------------------------------------------------------------------------------------------


def state(root: Path) -> dict[str, object]:
    proc = sh(python_command(scripts.STATE_PY, str(root), "r1", "{}", "{}"))
    assert proc.returncode == 0, proc.stderr
    return dict(json.loads(proc.stdout))


def test_the_state_script_reports_the_key_the_device_trusts_and_whether_keys_are_sealed(tmp_path: Path) -> None:
    require_root()
    root = tmp_path / "opt" / "fleetdesk"
    first = state(root)
    assert first["fleet_pub"] is None and first["root"] is True
    assert first["keys_sealed"] is True  # no keys/ yet: nothing to seal
    pem = new_pem()
    (root / "keys").mkdir(parents=True)
    (root / "keys" / "fleet.pub").write_bytes(pem)
    second = state(root)
    assert device_fleet_pub(second["fleet_pub"]) == pem and second["keys_sealed"] is False
    proc = sh(seal_command(str(root / "keys")))
    assert proc.returncode == 0, proc.stderr
    assert state(root)["keys_sealed"] is True


def test_sealing_as_root_makes_a_tree_root_owned_and_read_only_once(tmp_path: Path) -> None:
    require_root()
    top = tmp_path / "artifacts" / "abc"
    (top / "sub").mkdir(parents=True)
    (top / "model.onnx").write_bytes(b"weights")
    (top / "sub" / "golden.npz").write_bytes(b"golden")
    (top / "link").symlink_to("model.onnx")
    os.chown(top / "model.onnx", NOBODY, NOBODY)  # a file another user left there
    os.chmod(top / "sub", 0o777)
    missing = tmp_path / "artifacts" / "not-there"

    proc = sh(seal_command(str(top), str(missing)))
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout) == {"root": True, "sealed": [str(top)]}
    assert sealed_folders(proc.stdout) == (str(top),)
    after = modes(top)
    assert after.pop("link")[:2] == (0, 0)  # a link's modes mean nothing: left as it is
    assert after == {".": (0, 0, 0o555), "sub": (0, 0, 0o555), "model.onnx": (0, 0, 0o444),
                     "sub/golden.npz": (0, 0, 0o444)}
    assert (top / "model.onnx").read_bytes() == b"weights"  # the bytes are untouched
    again = sh(seal_command(str(top)))
    assert sealed_folders(again.stdout) == ()  # nothing left to change


def test_a_login_that_is_not_root_seals_nothing_and_says_so(tmp_path: Path) -> None:
    require_root()  # to run the script as another user
    top = tmp_path / "artifacts" / "abc"
    top.mkdir(parents=True)
    (top / "model.onnx").write_bytes(b"weights")
    os.chown(top, NOBODY, NOBODY)
    os.chown(top / "model.onnx", NOBODY, NOBODY)
    os.chmod(tmp_path, 0o755)
    before = modes(top)
    proc = sh(seal_command(str(top)), as_nobody=True)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout) == {"root": False, "sealed": []}
    assert modes(top) == before


def space(root: Path, folder: Path) -> list[int]:
    proc = sh(python_command(device_ops._SPACE_PY, str(root), str(folder), "model.onnx", "7", "manifest.json", "2"))
    assert proc.returncode == 0, proc.stderr
    return [int(x) for x in proc.stdout.split()]


def test_staging_seals_only_a_copy_with_its_manifest_and_a_partial_one_stays_writable(tmp_path: Path) -> None:
    require_root()
    root = tmp_path / "opt" / "fleetdesk"
    folder = root / "artifacts" / "abc"
    folder.mkdir(parents=True)
    (folder / ".model.onnx.fleetdesk-partial").write_bytes(b"wei")  # a push cut midway
    _free, present, manifest, unsealed = space(root, folder)
    assert (present, manifest, unsealed) == (3, 0, 0)  # partial: not complete, not to be sealed
    assert stat.S_IMODE(folder.stat().st_mode) & 0o200

    (folder / ".model.onnx.fleetdesk-partial").rename(folder / "model.onnx")
    (folder / "manifest.json").write_bytes(b"{}")
    _free, present, manifest, unsealed = space(root, folder)
    assert (present, manifest, unsealed) == (5, 1, 1)  # complete and still writable: to be sealed
    assert sealed_folders(sh(seal_command(str(folder))).stdout) == (str(folder),)
    assert space(root, folder)[2:] == [1, 0]
