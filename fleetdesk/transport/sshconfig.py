"""The operator's ~/.ssh/config, read the way OpenSSH reads it, and applied to an SSHTarget.

Owns resolving one host to its HostName/Port/User/IdentityFile settings and the rule for merging them.

The parser is asyncssh's (``asyncssh.config.SSHClientConfig``), the same code the asyncssh engine runs, rather
than paramiko's ``SSHConfig``, because it is the closer of the two to OpenSSH's ssh_config(5):

- it follows ``Include`` (with globs, relative to ~/.ssh); paramiko does not support Include at all;
- a bad line is reported as "FILE line N: reason"; paramiko says only "Unparsable line";
- paramiko performs DNS canonicalization while looking up, which resolve() must not do (no network here).

Both keep the first obtained value, match ``Host`` patterns with ``*``, ``?`` and ``!`` negation, append every
``IdentityFile``, and expand ``%h %p %r %u %l %L %n %d %i %C %%``. Known differences from OpenSSH, all rare:
Host patterns are matched case-sensitively as written (OpenSSH lowercases the pattern first);
``CanonicalizeHostname`` is not performed; an ``IdentityFile`` with tokens set before an ``Include`` is expanded
when that included file ends, so a later ``HostName`` does not reach its ``%h``. ``Match exec`` commands run, as
they do under ``ssh``.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import cast

from asyncssh.config import ConfigParseError, SSHClientConfig
from asyncssh.misc import IllegalUserName

from fleetdesk.errors import ConfigError
from fleetdesk.transport.target import SSHTarget

DEFAULT_CONFIG = Path("~", ".ssh", "config")

# SSHTarget fields the config can supply; an inventory row names the ones its operator set by hand.
CONFIGURABLE_FIELDS = frozenset({"host", "port", "username", "identity_files", "connect_timeout", "use_agent"})


@dataclass(frozen=True)
class SSHConfigEntry:
    """What ~/.ssh/config says about one host. None / () = the config does not set it (OpenSSH's default)."""

    host: str  # the name that was looked up, as the operator typed it
    hostname: str  # HostName with %h expanded, lowercased as ssh does; the host itself when not set
    port: int | None = None
    user: str | None = None
    identity_files: tuple[str, ...] = ()  # in order, tokens and ~ expanded
    identities_only: bool | None = None
    proxy_jump: str | None = None
    proxy_command: str | None = None
    user_known_hosts_files: tuple[str, ...] = ()
    connect_timeout: int | None = None
    config_path: str | None = None  # the file read; None when there was none

    def unsupported(self) -> tuple[str, ...]:
        """Directives set for this host that FleetDesk cannot follow, as "Directive value" strings."""
        found = []
        if self.proxy_jump:
            found.append(f"ProxyJump {self.proxy_jump}")
        if self.proxy_command:
            found.append(f"ProxyCommand {self.proxy_command}")
        return tuple(found)


def _local_user() -> str:
    try:
        import pwd

        return pwd.getpwuid(os.getuid()).pw_name  # what OpenSSH's %u is: the passwd entry, not $USER
    except (ImportError, KeyError):
        import getpass

        return getpass.getuser()


def _strings(value: object) -> tuple[str, ...]:
    if value is None:
        return ()
    if isinstance(value, (list, tuple)):
        return tuple(str(item) for item in value)
    return (str(value),)


def _expand_path(path: str) -> str:
    # ssh_config(5): "the file name may use the tilde syntax to refer to a user's home directory".
    return os.path.expanduser(path)


def resolve(host: str, *, config_path: str | os.PathLike[str] | None = None) -> SSHConfigEntry:
    """Resolve `host` through the operator's ssh config (``~/.ssh/config`` unless `config_path` is given).

    A missing default file means "no settings"; a missing explicit file, an unreadable file or a bad line
    raises ConfigError naming the file and line. Nothing is resolved over the network.
    """
    if not host or any(ch.isspace() for ch in host):
        raise ConfigError(f"{host!r} is not a host name to look up in the ssh config",
                          fix="give the device's host name or address")
    if config_path is None:
        path = DEFAULT_CONFIG.expanduser()
        if not path.exists():
            return SSHConfigEntry(host=host, hostname=host.lower())
    else:
        path = Path(config_path).expanduser()
        if not path.exists():
            raise ConfigError(f"the ssh config file {path} does not exist", fix="give an existing file",
                              step="read ssh config")
    config = _load(host, path, final=False)
    # OpenSSH parses twice when a "Match final" block is present; asyncssh's connect does the same.
    if config.has_match_final():
        config = _load(host, path, final=True)
    return _entry(host, path, config)


class _OpenSSHClientConfig(SSHClientConfig):
    """asyncssh's parser with %h lowercased, as OpenSSH lowercases the host name before expanding tokens."""

    def _set_tokens(self) -> None:
        super()._set_tokens()
        self._tokens["h"] = self._tokens["h"].lower()


def _load(host: str, path: Path, *, final: bool) -> SSHClientConfig:
    fix = f"correct that line of {path} (`ssh -G HOST -F {path}` shows how OpenSSH reads it)"
    try:
        # () for user and port: "not given on the command line", so the config's own values come through.
        # load() builds an instance of the class it is called on but is annotated as returning the base SSHConfig.
        config = cast(SSHClientConfig,
                      _OpenSSHClientConfig.load(None, [path], False, False, final, _local_user(), (), host, ()))
    except ConfigParseError as exc:
        text = str(exc)
        message = text if str(path) in text or " line " in text else f"{path}: {text}"
        raise ConfigError(message, fix=fix, step="read ssh config", cause=exc) from exc
    except IllegalUserName as exc:
        raise ConfigError(f"{path}: {exc}", fix=fix, step="read ssh config", cause=exc) from exc
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"the ssh config file {path} cannot be read: {exc}",
                          fix="check the file's permissions and that it is UTF-8 text",
                          step="read ssh config", cause=exc) from exc
    return config


def _entry(host: str, path: Path, config: SSHClientConfig) -> SSHConfigEntry:
    def opt(name: str) -> object:
        return config.get(name)

    hostname = opt("Hostname")
    port = opt("Port")
    user = opt("User")
    timeout = opt("ConnectTimeout")
    identities_only = opt("IdentitiesOnly")
    proxy_jump = opt("ProxyJump")
    proxy_command = opt("ProxyCommand")
    return SSHConfigEntry(
        host=host,
        hostname=(str(hostname) if hostname else host).lower(),
        port=int(port) if isinstance(port, int) else None,
        user=str(user) if user else None,
        identity_files=tuple(_expand_path(p) for p in _strings(opt("IdentityFile"))),
        identities_only=bool(identities_only) if identities_only is not None else None,
        proxy_jump=str(proxy_jump) if proxy_jump and str(proxy_jump).lower() != "none" else None,
        proxy_command=str(proxy_command) if proxy_command else None,
        user_known_hosts_files=tuple(_expand_path(p) for p in _strings(opt("UserKnownHostsFile"))),
        connect_timeout=int(timeout) if isinstance(timeout, int) else None,
        config_path=str(path),
    )


def apply_ssh_config(target: SSHTarget, entry: SSHConfigEntry, *,
                     explicit: Collection[str] = frozenset()) -> SSHTarget:
    """The target with the operator's ssh config applied.

    The rule: the operator's ssh config is the source of HostName, Port, User, IdentityFile and ConnectTimeout
    for the device, exactly as `ssh` would use them, unless the inventory row set that field explicitly.
    `explicit` names those SSHTarget fields ("host", "port", "username", "identity_files", "connect_timeout",
    "use_agent"); they are kept as they are. For the others:

    - HostName replaces `host`, Port `port`, User `username`, ConnectTimeout `connect_timeout`;
    - IdentityFile entries come first, then the target's own identity files (OpenSSH also tries the
      configured identities before anything else), without duplicates;
    - ``IdentitiesOnly yes`` turns the agent off (`use_agent=False`), so only the named files are offered.

    ProxyJump / ProxyCommand are not applied: SSHTarget cannot express them. They stay in the entry and
    `check_supported` refuses them clearly.
    """
    unknown = set(explicit) - CONFIGURABLE_FIELDS
    if unknown:
        raise ConfigError(f"unknown explicitly-set fields {sorted(unknown)}",
                          fix=f"name fields among {sorted(CONFIGURABLE_FIELDS)}")
    changes: dict[str, object] = {}
    if "host" not in explicit and entry.hostname != entry.host.lower():
        changes["host"] = entry.hostname
    if "port" not in explicit and entry.port is not None:
        changes["port"] = entry.port
    if "username" not in explicit and entry.user is not None:
        changes["username"] = entry.user
    if "identity_files" not in explicit and entry.identity_files:
        changes["identity_files"] = tuple(dict.fromkeys((*entry.identity_files, *target.identity_files)))
    if "connect_timeout" not in explicit and entry.connect_timeout is not None:
        changes["connect_timeout"] = float(entry.connect_timeout)
    if "use_agent" not in explicit and entry.identities_only:
        changes["use_agent"] = False
    return dataclasses.replace(target, **changes) if changes else target  # type: ignore[arg-type]


def resolve_target(target: SSHTarget, *, config_path: str | os.PathLike[str] | None = None,
                   explicit: Collection[str] = frozenset()) -> SSHTarget:
    """`apply_ssh_config(target, resolve(target.host))`: the target as `ssh <target.host>` would reach it."""
    return apply_ssh_config(target, resolve(target.host, config_path=config_path), explicit=explicit)


def check_supported(entry: SSHConfigEntry, *, device: str | None = None) -> None:
    """Raise ConfigError if the config asks for something FleetDesk cannot do for this host (a jump host)."""
    unsupported = entry.unsupported()
    if unsupported:
        where = entry.config_path or "the ssh config"
        raise ConfigError(
            f"{where} sets {'; '.join(unsupported)} for {entry.host}, which FleetDesk does not follow",
            fix=f"if the device is reachable directly, add a 'Host {entry.host}' block with 'ProxyJump none' and "
                "'ProxyCommand none' above the one that sets it; otherwise run FleetDesk inside that network",
            device=device, step="read ssh config")


def known_hosts_files(entry: SSHConfigEntry) -> Sequence[str]:
    """The user known_hosts files ssh would read for this host (UserKnownHostsFile, or OpenSSH's default)."""
    if entry.user_known_hosts_files:
        return entry.user_known_hosts_files
    return (_expand_path("~/.ssh/known_hosts"), _expand_path("~/.ssh/known_hosts2"))
