"""`python -m fleetdesk_agent [--root DIR] [--sysroot DIR] COMMAND ...`: the agent's command line.

Every answer is JSON lines on stdout (protocol.py); bad arguments too. serve, bench and selftest live in
their own modules, imported only when that command runs (so telemetry never pays for onnxruntime).
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import traceback
from types import ModuleType
from typing import Any, NoReturn

from . import protocol
from .protocol import AgentError

DEFAULT_ROOT = "/opt/fleetdesk"
# Commands whose module is loaded only when named: module name = command name. Each has
# add_arguments(subparser) and run(args, emit) -> int.
LAZY_COMMANDS = {
    "serve": "run the ONNX Runtime model server for the active model",
    "bench": "benchmark an artifact on this device",
    "selftest": "prove the runtime: import onnxruntime, run a tiny inference, list execution providers",
    "check": "compare an artifact's outputs on its samples with the golden outputs it carries",
    "shadow": "start, stop or read the model server's shadow candidate (mirrored requests, agreement, latency)",
}
# Commands taking an ARTIFACT that also accept the word "current" (the active model).
ACCEPT_CURRENT = ("bench", "check")
DEFAULT_WAIT_LOAD_S = 60.0
MODEL_LOAD_FAILED = "model-load-failed"  # the error code when the server cannot load what activate switched to
_GLOBAL_WITH_VALUE = ("--root", "--sysroot")


class ArgumentParser(argparse.ArgumentParser):
    """argparse that reports bad arguments as an error line instead of usage text and exit status 2 alone."""

    def error(self, message: str) -> NoReturn:
        raise AgentError(protocol.BAD_ARGUMENTS, f"{self.prog}: {message}",
                         fix=f"see `{self.prog} --help` for the commands and options")


def command_of(argv: list[str]) -> str | None:
    """The command word in argv, skipping the global options before it."""
    i = 0
    while i < len(argv):
        arg = argv[i]
        if arg in _GLOBAL_WITH_VALUE:
            i += 2
        elif arg.startswith("-"):
            i += 1
        else:
            return arg
    return None


def _lazy_module(name: str) -> Any:
    module: ModuleType  # one name for whichever command module is imported
    try:
        if name == "serve":
            from . import serve as module
        elif name == "bench":
            from . import bench as module
        elif name == "check":
            from . import check as module
        elif name == "shadow":
            from . import shadow as module
        else:
            from . import selftest as module
    except ImportError as exc:
        raise AgentError(protocol.MISSING_MODULE, f"this agent cannot run `{name}`: {exc}",
                         fix="provision the agent again (fleetdesk provision DEVICE); for a missing "
                             "onnxruntime/numpy, provision the runtime") from None
    return module


def build_parser(load: str | None = None) -> tuple[ArgumentParser, Any]:
    """The parser; with `load` naming a lazy command, that command's module is imported and adds its options.
    Returns (parser, the loaded module or None)."""
    from . import telemetry

    parser = ArgumentParser(prog="fleetdesk-agent", description="FleetDesk's on-device agent (JSON lines).")
    parser.add_argument("--root", default=os.environ.get("FLEETDESK_ROOT") or DEFAULT_ROOT,
                        help="the FleetDesk root on this device (default $FLEETDESK_ROOT or /opt/fleetdesk)")
    parser.add_argument("--sysroot", default="", help="prefix for /proc and /sys reads (tests)")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    commands.required = True

    commands.add_parser("status", help="the agent, runtime, active model and server")
    telemetry.add_arguments(commands.add_parser("telemetry", help="print a sample every interval"))
    p = commands.add_parser("activate", help="switch the active model to an artifact")
    p.add_argument("sha", metavar="SHA")
    p.add_argument("--confirm-within", type=float, default=None, metavar="S",
                   help="revert by itself unless confirmed within S seconds")
    p.add_argument("--wait-load", type=float, default=DEFAULT_WAIT_LOAD_S, metavar="S",
                   help="wait up to S seconds for the running model server to load it, and go back to the "
                        f"previous model if it cannot (0: do not wait; default {DEFAULT_WAIT_LOAD_S:g})")
    p = commands.add_parser("verify", help="check an artifact's signature and every file's hash (no switch)")
    p.add_argument("sha", metavar="SHA")
    p = commands.add_parser("confirm", help="keep the pending activation")
    p.add_argument("sha", metavar="SHA")
    p = commands.add_parser("rollback", help="go back to the previous model")
    p.add_argument("--wait-load", type=float, default=DEFAULT_WAIT_LOAD_S, metavar="S",
                   help="wait up to S seconds for the running model server to load it (0: do not wait)")
    p = commands.add_parser("watchdog")  # started by activate, detached; not for people
    p.add_argument("sha", metavar="SHA")
    p.add_argument("--token", required=True)
    # Run by the boot path (fleetdesk-boot) before the model server starts: settle what a reboot interrupted or
    # let expire, and give an activation still inside its window a watchdog again.
    p = commands.add_parser("settle", help="revert an unconfirmed activation whose deadline passed (run at boot)")
    p.add_argument("--by", default="boot", help=argparse.SUPPRESS)
    p = commands.add_parser("witness", help="keep an audit checkpoint signed by the fleet key, or --list them")
    p.add_argument("--seq", type=int, metavar="N", help="the audit entry's number")
    p.add_argument("--hash", metavar="SHA256", help="the audit entry's hash (hex)")
    p.add_argument("--signature", metavar="B64", help="the fleet key's signature of the checkpoint")
    p.add_argument("--list", action="store_true", help="print the checkpoints this device holds")
    loaded = None
    for name, text in LAZY_COMMANDS.items():
        p = commands.add_parser(name, help=text)
        if name == load:
            loaded = _lazy_module(name)
            loaded.add_arguments(p)
    return parser, loaded


def _stop(signum: int, frame: Any) -> None:
    raise protocol.Stopped(signum)


def dispatch(args: argparse.Namespace, module: Any) -> int:
    from . import state, status

    emit = protocol.emit
    root = args.root
    if module is not None:
        if args.command in ACCEPT_CURRENT and args.artifact == "current":
            args.artifact = _current(root)
        return int(module.run(args, emit) or 0)
    if args.command == "telemetry":
        from . import telemetry

        return telemetry.run(args, emit)
    if args.command == "status":
        emit(status.collect(root))
    elif args.command == "activate":
        emit(protocol.result("activate", **activate(args)))
    elif args.command == "verify":
        state.check_sha(args.sha)
        emit(protocol.result("verify", artifact=args.sha, **state.verify_artifact(root, args.sha)))
    elif args.command == "confirm":
        emit(protocol.result("confirm", **state.confirm(root, args.sha)))
    elif args.command == "rollback":
        emit(protocol.result("rollback", **rollback(args)))
    elif args.command == "watchdog":
        signal.signal(signal.SIGHUP, signal.SIG_IGN)  # it outlives the SSH session that started it
        state.check_sha(args.sha)
        record = state.watch(root, args.sha, args.token)
        emit(protocol.event("reverted", **record) if record else protocol.event("watchdog-done", sha=args.sha))
    elif args.command == "settle":
        emit(protocol.result("settle", **settle(args)))
    elif args.command == "witness":
        from . import witness

        if args.list:
            emit(protocol.result("witness", checkpoints=witness.stored(root)))
        elif args.seq is None or not args.hash or not args.signature:
            raise AgentError(protocol.BAD_ARGUMENTS, "witness needs --seq, --hash and --signature (or --list)",
                             fix="hand over a checkpoint as FleetDesk makes it")
        else:
            emit(protocol.result("witness", **witness.add(root, args.seq, args.hash, args.signature)))
    return protocol.EXIT_OK


def _current(root: str) -> str:
    from . import state

    sha = state.link_target(root, "current")
    if sha is None:
        raise AgentError(protocol.NOT_FOUND, "there is no active model on this device (ROOT/current is not set)",
                         fix="activate an artifact first, or name one by its SHA-256")
    return sha


def _spawner(root: str) -> Any:
    from . import state

    def spawn(sha: str, token: str) -> int:
        return state.spawn_watchdog(root, sha, token, os.path.join(root, "log", "watchdog.log"))

    return spawn


def settle(args: argparse.Namespace) -> dict[str, Any]:
    """`settle`: what is due is reverted; a pending activation still in its window gets a watchdog again."""
    from . import state

    if not os.path.isdir(args.root):
        return {"reverted": None, "pending": None}
    reverted, pending = state.rearm(args.root, _spawner(args.root), args.by)
    return {"reverted": reverted, "pending": pending}


def activate(args: argparse.Namespace) -> dict[str, Any]:
    """`activate`: switch, then wait for the running server to load the new model; if it cannot, go back and
    say why (an error line "model-load-failed" with the server's reason)."""
    import time

    from . import state, status

    root = args.root
    if args.wait_load < 0:
        raise AgentError(protocol.BAD_ARGUMENTS, f"--wait-load {args.wait_load:g} is negative",
                         fix="give the seconds to wait for the model server, or 0 not to wait")

    since = time.time()
    answer = state.activate(root, args.sha, args.confirm_within, spawn=_spawner(root))
    if not answer.get("changed") or not answer.get("serve_reloaded") or args.wait_load == 0:
        answer["serving"] = None
        return answer
    loaded = status.wait_loaded(root, args.sha, since, args.wait_load)
    answer["serving"] = loaded
    if loaded is not None and loaded["loaded"] is False:
        record = state.undo_failed_load(root, args.sha, loaded["reason"])
        back = f"; the device went back to {record['to'] or 'no model'}" if record else ""
        raise AgentError(MODEL_LOAD_FAILED, f"the model server could not load {args.sha}: {loaded['reason']}{back}",
                         fix=loaded.get("fix") or "check that the model opens with onnxruntime and the device's "
                             "execution providers (fleetdesk-agent bench SHA on the device shows the error); the "
                             "previous model serves", file=loaded.get("file"))
    return answer


def rollback(args: argparse.Namespace) -> dict[str, Any]:
    """`rollback`, then wait (like activate) until the running server has the model it went back to; the answer's
    "serving" says whether it loaded (there is nothing further back to go to when it did not)."""
    import time

    from . import state, status

    since = time.time()
    answer = state.rollback(args.root)
    active = answer.get("active")
    if active and answer.get("changed") and status.serving(args.root)["running"] and args.wait_load > 0:
        answer["serving"] = status.wait_loaded(args.root, active, since, args.wait_load)
    else:
        answer["serving"] = None
    return answer


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    for signum in (signal.SIGTERM, signal.SIGHUP, signal.SIGINT):
        signal.signal(signum, _stop)
    try:
        try:
            name = command_of(argv)
            parser, module = build_parser(name if name in LAZY_COMMANDS else None)
            args = parser.parse_args(argv)
            args.root = os.path.abspath(args.root)
            return dispatch(args, module)
        except AgentError as exc:
            protocol.emit(exc.line())
            return protocol.EXIT_ERROR
        except (protocol.Stopped, KeyboardInterrupt):
            return protocol.EXIT_OK
        except BrokenPipeError:
            raise
        except Exception as exc:  # a bug: still one error line, and the traceback for the log
            traceback.print_exc(file=sys.stderr)
            protocol.emit(AgentError(protocol.INTERNAL, f"{type(exc).__name__}: {exc}",
                                     fix="report this with the agent's stderr").line())
            return protocol.EXIT_ERROR
    except (BrokenPipeError, protocol.Stopped):
        # The reader went away (SSH session closed, `| head`): end quietly. Point stdout at /dev/null so the
        # interpreter's final flush does not complain (the Python docs' advice for SIGPIPE).
        try:
            null = os.open(os.devnull, os.O_WRONLY)
            os.dup2(null, sys.stdout.fileno())
        except OSError:
            pass
        return protocol.EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
