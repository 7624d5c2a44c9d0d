"""The one place that turns strings into shell words for commands run on a device.

Paths, names and anything else a device or an operator supplied are data: they reach a remote shell only through here.
"""

from __future__ import annotations

import shlex
from collections.abc import Sequence


def shell_quote(word: str) -> str:
    """One shell word, safe whatever it holds (spaces, quotes, `$(...)`, newlines)."""
    return shlex.quote(word)


def shell_join(argv: Sequence[str]) -> str:
    """A command line whose words reach the remote program exactly as given."""
    return shlex.join(list(argv))


def python_command(script: str, *args: str | int) -> str:
    """Run `script` with the device's python3, falling back to `sh` when there is none.

    The script text and every argument travel as quoted words, never spliced into the shell text.
    """
    return shell_join(["python3", "-c", script, *(str(a) for a in args)])


def sh_command(script: str, *args: str | int) -> str:
    """Run a POSIX sh `script` with positional arguments $1.. (for devices without python3)."""
    return shell_join(["sh", "-c", script, "sh", *(str(a) for a in args)])


def python_or_sh(py_script: str, sh_script: str, *args: str | int) -> str:
    """One command line: the python3 version where the device has python3, else the sh version."""
    return (f"if command -v python3 >/dev/null 2>&1; then {python_command(py_script, *args)}; "
            f"else {sh_command(sh_script, *args)}; fi")
