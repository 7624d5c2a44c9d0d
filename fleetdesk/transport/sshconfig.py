"""The operator's ~/.ssh/config, read the way OpenSSH reads it, and applied to an SSHTarget.

Owns resolving one host to its HostName/Port/User/IdentityFile settings and the rule for merging them.

The parser is asyncssh's (``asyncssh.config.SSHClientConfig``), the same code the asyncssh engine runs, rather
than paramiko's ``SSHConfig``, because it is the closer of the two to OpenSSH's ssh_config(5):

- it follows ``Include`` (with globs, relative to ~/.ssh); paramiko does not support Include at all;
- a bad line is reported as "FILE line N: reason"; paramiko says only "Unparsable line";
- paramiko performs DNS canonicalization while looking up, which resolve() must not do (no network here).

Both keep the first obtained value, match ``Host`` patterns with ``*``, ``?`` and ``!`` negation, append every
``IdentityFile``, and expand ``%h %p %r %u %l %L %n %d %i %C %%``.

A device goes by several names: the operator's name for it, its address and its mDNS host name. `ssh` is given
one, so an operator's ``Host 198.18.1.*`` block applies to `ssh 198.18.1.7` but not to `ssh floor-cam-1`. FleetDesk
reaches the device as all of them at once, so a ``Host`` line (and ``Match host`` / ``Match originalhost``) applies
when its patterns match any of the names, and is skipped when a ``!`` pattern matches any of them (ssh_config(5):
"if a negated entry is matched, then the Host entry is ignored"). Everything else is ssh's: the file is read top to
bottom and the first value obtained for each directive wins; tokens (%h, %n) expand as for `ssh NAME`.
Each entry remembers the lines that set its values (file, line, directive), for the operator to see.

Known differences from OpenSSH, all rare:
Host patterns are matched case-sensitively as written (OpenSSH lowercases the pattern first);
``CanonicalizeHostname`` is not performed; an ``IdentityFile`` with tokens set before an ``Include`` is expanded
when that included file ends, so a later ``HostName`` does not reach its ``%h``. ``Match exec`` commands run, as
they do under ``ssh``.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

from asyncssh.config import ConfigParseError, SSHClientConfig
from asyncssh.misc import IllegalUserName
from asyncssh.pattern import WildcardPattern

from fleetdesk.errors import ConfigError
from fleetdesk.transport.target import SSHTarget

DEFAULT_CONFIG = Path("~", ".ssh", "config")

# SSHTarget fields the config can supply; an inventory row names the ones its operator set by hand.
CONFIGURABLE_FIELDS = frozenset({"host", "port", "username", "identity_files", "connect_timeout", "use_agent"})


@dataclass(frozen=True)
class AppliedLine:
    """One line of the operator's ssh config that gave a device a setting: where it is and what it says."""

    path: str
    line: int
    directive: str  # as ssh_config(5) spells it: "IdentityFile", "HostName"
    value: str  # as written, before tokens are expanded
    block: str = ""  # the Host / Match line it sits under ("Host 198.18.1.*"); "" at the top of a file

    def __str__(self) -> str:
        under = f"  ({self.block})" if self.block else ""
        return f"{self.path}:{self.line}: {self.directive} {self.value}{under}"


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
    aliases: tuple[str, ...] = ()  # the device's other names, matched against Host patterns as well as `host`
    # Where each value came from, in the order read. Provenance only: two entries with the same settings are equal.
    applied: tuple[AppliedLine, ...] = field(default=(), compare=False)
    # Every file the parser read (the config and what it Includes), so that a change to any can be noticed.
    files: tuple[str, ...] = field(default=(), compare=False)

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


def resolve(host: str, *, aliases: Sequence[str] = (),
            config_path: str | os.PathLike[str] | None = None) -> SSHConfigEntry:
    """Resolve `host` through the operator's ssh config (``~/.ssh/config`` unless `config_path` is given).

    `aliases` are the device's other names (its address, its mDNS host name): a Host or Match host/originalhost
    line applies when it matches `host` or any of them. Tokens still expand as for `ssh HOST`.
    A missing default file means "no settings"; a missing explicit file, an unreadable file or a bad line
    raises ConfigError naming the file and line. Nothing is resolved over the network.
    """
    if not host or any(ch.isspace() for ch in host):
        raise ConfigError(f"{host!r} is not a host name to look up in the ssh config",
                          fix="give the device's host name or address")
    others = tuple(name for name in dict.fromkeys(aliases) if name and name != host)
    if config_path is None:
        path = DEFAULT_CONFIG.expanduser()
        if not path.exists():
            return SSHConfigEntry(host=host, hostname=host.lower(), aliases=others)
    else:
        path = Path(config_path).expanduser()
        if not path.exists():
            raise ConfigError(f"the ssh config file {path} does not exist", fix="give an existing file",
                              step="read ssh config")
    config = _load(host, others, path, final=False)
    # OpenSSH parses twice when a "Match final" block is present; asyncssh's connect does the same.
    if config.has_match_final():
        config = _load(host, others, path, final=True)
    return _entry(host, others, path, config)


def _matches_any(patterns: Sequence[str], names: Sequence[str]) -> bool:
    """OpenSSH's rule for a pattern list, for a device that goes by several names: a "!" pattern matching any
    of them rules the line out; otherwise one pattern matching one name is enough."""
    hit = False
    for pattern in patterns:
        negated = pattern.startswith("!")
        matcher = WildcardPattern(pattern[1:] if negated else pattern)
        if any(matcher.matches(name) for name in names):
            if negated:
                return False
            hit = True
    return hit


_UNSET = object()
# The directives asyncssh spells otherwise than ssh_config(5), which is what the operator wrote and reads.
_SPELLING = {"Hostname": "HostName"}
_NAME_CRITERIA = ("host", "originalhost")
_ARGUMENTLESS_CRITERIA = ("all", "canonical", "final")


class _OpenSSHClientConfig(SSHClientConfig):
    """asyncssh's parser with %h lowercased, as OpenSSH lowercases the host name before expanding tokens; with
    Host and Match host/originalhost matched against every name of the device; keeping the lines that applied."""

    def __init__(self, last_config: SSHClientConfig | None, reload: bool, canonical: bool, final: bool,
                 local_user: str, user: Any, host: str, port: Any, aliases: Sequence[str] = ()) -> None:
        super().__init__(cast(SSHClientConfig, last_config), reload, canonical, final, local_user, user, host, port)
        self._names = (host, *aliases)
        self._block = ""  # the Host/Match line the parser is under, for AppliedLine.block
        self.applied: list[AppliedLine] = []
        self.files: list[str] = []  # every file parse() read, Includes too

    def _set_tokens(self) -> None:
        super()._set_tokens()
        self._tokens["h"] = self._tokens["h"].lower()

    def parse(self, path: Path) -> None:
        outer = self._block  # an Include inside a Host block: its lines are under that block
        self.files.append(str(path))
        try:
            super().parse(path)
        finally:
            self._block = outer

    def _match_host(self, option: str, args: list[str]) -> None:
        self._block = f"Host {' '.join(args)}"
        self._matching = _matches_any(",".join(args).split(","), self._names)
        args.clear()

    def _match(self, option: str, args: list[str]) -> None:
        """asyncssh's Match, with each host/originalhost criterion decided here over all the names, and handed on
        as "all" (satisfied) or "!all" (not), so the other criteria and their errors stay asyncssh's."""
        self._block = f"Match {' '.join(args)}"
        hostname = self._options.get("Hostname")
        rewritten: list[str] = []
        words = list(args)
        while words:
            word = words.pop(0)
            negated = word.startswith("!")
            criterion = word[1:].lower() if negated else word.lower()
            if criterion in _ARGUMENTLESS_CRITERIA or not words:
                rewritten.append(word)
                continue
            argument = words.pop(0)
            if criterion not in _NAME_CRITERIA:
                rewritten += [word, argument]
                continue
            # "host" is the HostName once one was set, as in ssh; "originalhost" is the names the device goes by.
            names = (str(hostname),) if criterion == "host" and hostname else self._names
            rewritten.append("all" if _matches_any(argument.split(","), names) != negated else "!all")
        args[:] = rewritten
        super()._match(option, args)

    def _record(self, option: str, written: str) -> None:
        self.applied.append(AppliedLine(str(self._path), self._line_no, _SPELLING.get(option, option), written,
                                        self._block))


def _traced(handler: Callable[..., None]) -> Callable[..., None]:
    """`handler` (asyncssh's setter of one directive), noting the line when it gave the host a value: the first
    value obtained for a directive, or one more for those that collect (IdentityFile, CertificateFile, SendEnv)."""
    def run(config: _OpenSSHClientConfig, option: str, args: list[str]) -> None:
        written = " ".join(args)
        before = config.get(option, _UNSET)
        count = len(before) if isinstance(before, list) else -1
        handler(config, option, args)
        after = config.get(option, _UNSET)
        if (before is _UNSET and after is not _UNSET) or (isinstance(after, list) and len(after) != count):
            config._record(option, written)
    return run


_OpenSSHClientConfig._handlers = {
    name: (option, _traced(handler)) for name, (option, handler) in SSHClientConfig._handlers.items()
    if name not in ("host", "match", "include")
} | {
    "host": ("Host", _OpenSSHClientConfig._match_host),
    "match": ("Match", _OpenSSHClientConfig._match),
    "include": SSHClientConfig._handlers["include"],
}


def _load(host: str, aliases: Sequence[str], path: Path, *, final: bool) -> _OpenSSHClientConfig:
    fix = f"correct that line of {path} (`ssh -G HOST -F {path}` shows how OpenSSH reads it)"
    try:
        # () for user and port: "not given on the command line", so the config's own values come through.
        # load() builds an instance of the class it is called on but is annotated as returning the base SSHConfig.
        config = cast(_OpenSSHClientConfig,
                      _OpenSSHClientConfig.load(None, [path], False, False, final, _local_user(), (), host, (),
                                                tuple(aliases)))
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


def _entry(host: str, aliases: tuple[str, ...], path: Path, config: _OpenSSHClientConfig) -> SSHConfigEntry:
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
        aliases=aliases,
        applied=tuple(config.applied),
        files=tuple(dict.fromkeys(config.files)),
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
