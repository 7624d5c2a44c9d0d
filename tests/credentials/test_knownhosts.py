"""known_hosts import agrees with OpenSSH's own lookup, `ssh-keygen -F`, on plain and `ssh-keygen -H` files."""

from __future__ import annotations

import logging
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest

from fleetdesk.errors import ConfigError
from fleetdesk.transport.hostkey import PublicKey, parse_public_key
from fleetdesk.transport.knownhosts import import_known_hosts, lookup_known_hosts, lookup_name
from tests.conftest import skip_or_fail


@dataclass(frozen=True)
class Keys:
    alpha: PublicKey
    alpha_2222: PublicKey
    line2: PublicKey
    ca: PublicKey
    beta: PublicKey
    revoked: PublicKey


def ssh_keygen(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["ssh-keygen", *args], capture_output=True, text=True, timeout=60, cwd=cwd, check=False,
                          stdin=subprocess.DEVNULL)


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> Keys:
    if shutil.which("ssh-keygen") is None:
        skip_or_fail("ssh-keygen is not installed (apt-get install openssh-client)")
    folder = tmp_path_factory.mktemp("hostkeys")
    made = {}
    for name, key_type in [("alpha", "ed25519"), ("alpha_2222", "ed25519"), ("line2", "ecdsa"), ("ca", "ed25519"),
                           ("beta", "rsa"), ("revoked", "ed25519")]:
        proc = ssh_keygen("-q", "-t", key_type, "-N", "", "-C", name, "-f", str(folder / name))
        assert proc.returncode == 0, proc.stderr
        made[name] = parse_public_key((folder / f"{name}.pub").read_text())
    return Keys(**made)


def known_hosts_text(k: Keys) -> str:
    return "\n".join([
        "# a comment line, then a blank one",
        "",
        f"alpha,198.18.1.5 {k.alpha.line} operator@laptop",
        f"[alpha]:2222 {k.alpha_2222.line}",
        f"*.line2,!bad.line2 {k.line2.line}",
        f"pi-??.line3 {k.line2.line}",
        f"@revoked alpha {k.revoked.line}",
        f"alpha {k.revoked.line}",  # listed as a normal key too: revoked still wins
        f"@cert-authority *.factory {k.ca.line}",
        f"Beta {k.beta.line}",
        f"[198.18.1.5]:2222,[alpha.lan]:2222 {k.alpha_2222.line}",
    ]) + "\n"


def damaged_lines(k: Keys) -> str:
    # ssh skips these; `ssh-keygen -H` refuses a file that has them, so they are appended after hashing.
    return f"gamma ssh-ed25519 AAAAnot-base64!!\ngamma\n@unknown-marker alpha {k.alpha.line}\n"


@pytest.fixture
def files(keys: Keys, tmp_path: Path) -> dict[str, Path]:
    plain = tmp_path / "known_hosts"
    plain.write_text(known_hosts_text(keys) + damaged_lines(keys))
    hashed = tmp_path / "known_hosts.hashed"
    hashed.write_text(known_hosts_text(keys))
    proc = ssh_keygen("-H", "-f", str(hashed))
    assert proc.returncode == 0, proc.stderr
    assert "|1|" in hashed.read_text()
    with hashed.open("a") as out:
        out.write(damaged_lines(keys))
    return {"plain": plain, "hashed": hashed}


def openssh_lookup(name: str, path: Path) -> tuple[set[str], set[str]]:
    """(keys, revoked keys) that `ssh-keygen -F` finds for a lookup name, as "TYPE BLOB" lines."""
    proc = ssh_keygen("-F", name, "-f", str(path))
    keys: set[str] = set()
    revoked: set[str] = set()
    for line in proc.stdout.splitlines():
        if not line or line.startswith("#"):
            continue
        fields = line.split()
        if fields[0] == "@revoked":
            revoked.add(" ".join(fields[2:4]))
        elif not fields[0].startswith("@"):
            keys.add(" ".join(fields[1:3]))
    return keys, revoked


CASES = [("alpha", 22), ("alpha", 2222), ("198.18.1.5", 22), ("198.18.1.5", 2222), ("alpha.lan", 2222),
         ("x.line2", 22), ("bad.line2", 22), ("pi-07.line3", 22), ("pi-7.line3", 22), ("beta", 22),
         ("cam.factory", 22), ("nobody", 22), ("alpha", 2200)]
# Not "gamma": `ssh-keygen -F` prints a line whose key does not decode, which ssh itself then skips.


@pytest.mark.parametrize("kind", ["plain", "hashed"])
@pytest.mark.parametrize(("host", "port"), CASES)
def test_lookup_agrees_with_ssh_keygen(files: dict[str, Path], kind: str, host: str, port: int) -> None:
    path = files[kind]
    theirs, theirs_revoked = openssh_lookup(lookup_name(host, port), path)
    ours = lookup_known_hosts(host, port, path=path)
    assert {k.line for k in ours.revoked} == theirs_revoked
    assert {k.line for k in ours.keys} == theirs - theirs_revoked
    assert ours.files == (str(path),)


def test_what_is_imported_for_each_kind_of_entry(keys: Keys, files: dict[str, Path]) -> None:
    for path in files.values():
        assert import_known_hosts("198.18.1.5", path=path) == [keys.alpha]  # one of a comma list
        assert import_known_hosts("ALPHA", 2222, path=path) == [keys.alpha_2222]  # [host]:port, any case
        assert import_known_hosts("x.line2", path=path) == [keys.line2]  # wildcard
        assert import_known_hosts("bad.line2", path=path) == []  # negated
        assert import_known_hosts("pi-07.line3", path=path) == [keys.line2]  # ? is exactly one character
        assert import_known_hosts("pi-7.line3", path=path) == []
        assert import_known_hosts("beta", path=path) == [keys.beta]
        assert import_known_hosts("alpha", 2200, path=path) == []  # another port is another host


def test_revoked_key_is_never_imported_and_is_reported(keys: Keys, files: dict[str, Path],
                                                       caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    for path in files.values():
        result = lookup_known_hosts("alpha", path=path)
        assert result.keys == (keys.alpha,)
        assert result.revoked == (keys.revoked,)
        assert import_known_hosts("alpha", path=path) == [keys.alpha]
    assert keys.revoked.fingerprint in caplog.text and "@revoked" in caplog.text


def test_cert_authority_and_damaged_lines_are_skipped_with_notes(keys: Keys, files: dict[str, Path]) -> None:
    factory = lookup_known_hosts("cam.factory", path=files["plain"])
    assert factory.keys == () and factory.revoked == ()
    assert any("line 9" in n and "@cert-authority" in n for n in factory.notes)
    gamma = lookup_known_hosts("gamma", path=files["plain"])
    assert gamma.keys == ()
    assert any("line 12" in n and "base64" in n for n in gamma.notes)
    assert any("line 13" in n for n in gamma.notes)
    alpha = lookup_known_hosts("alpha", path=files["plain"])
    assert any("line 14" in n and "unknown marker" in n for n in alpha.notes)


def test_hashed_entry_matches_only_its_own_name(keys: Keys, tmp_path: Path) -> None:
    path = tmp_path / "known_hosts"
    path.write_text(f"line2-pi-07.local {keys.alpha.line}\n[line2-pi-07.local]:2022 {keys.beta.line}\n")
    assert ssh_keygen("-H", "-f", str(path)).returncode == 0
    text = path.read_text()
    assert "line2-pi-07" not in text
    assert import_known_hosts("line2-pi-07.local", path=path) == [keys.alpha]
    assert import_known_hosts("line2-pi-07.local", 2022, path=path) == [keys.beta]
    assert import_known_hosts("line2-pi-08.local", path=path) == []


def test_several_files_and_duplicates(keys: Keys, tmp_path: Path) -> None:
    first = tmp_path / "a"
    second = tmp_path / "b"
    first.write_text(f"alpha {keys.alpha.line}\n")
    second.write_text(f"alpha {keys.alpha.line}\nalpha {keys.beta.line}\n")
    assert import_known_hosts("alpha", path=[first, tmp_path / "missing", second]) == [keys.alpha, keys.beta]


def test_missing_unreadable_and_odd_input(keys: Keys, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    (tmp_path / ".ssh").mkdir()
    (tmp_path / ".ssh" / "known_hosts").write_bytes(b"\xff\xfe broken \x00\n" + f"alpha {keys.alpha.line}\n".encode())
    assert import_known_hosts("alpha") == [keys.alpha]  # default file, a bad byte spoils one line only
    assert import_known_hosts("alpha", path=tmp_path / "none") == []
    with pytest.raises(ConfigError, match="cannot be read"):
        import_known_hosts("alpha", path=tmp_path / ".ssh")  # a directory
    with pytest.raises(ConfigError):
        import_known_hosts("alpha,beta", path=tmp_path / "none")
    with pytest.raises(ConfigError):
        import_known_hosts("alpha", 0, path=tmp_path / "none")
