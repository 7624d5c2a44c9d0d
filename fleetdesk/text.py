"""How a string a device supplied is shown to a person: control and invisible characters spelled out, never obeyed.

The one rule for every place such text reaches a reader: the GUI's labels and tables (fleetdesk.gui.text
re-exports it) and the log lines the core writes (a terminal obeys an escape sequence a device sent).
"""

from __future__ import annotations

_ESCAPES = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def visible_text(text: str) -> str:
    """`text` as an operator should see it: every character Python does not count as printable (controls, format
    and bidi characters, separators other than the plain space, private and unassigned code points) spelled out as
    its escape ("\\n", "\\x1b", "\\u202e"), exactly as repr() writes it; the rest kept."""
    out: list[str] = []
    for ch in text:
        if ch.isprintable():
            out.append(ch)
        elif ch in _ESCAPES:
            out.append(_ESCAPES[ch])
        elif ord(ch) < 0x100:
            out.append(f"\\x{ord(ch):02x}")
        elif ord(ch) <= 0xFFFF:
            out.append(f"\\u{ord(ch):04x}")
        else:
            out.append(f"\\U{ord(ch):08x}")
    return "".join(out)
