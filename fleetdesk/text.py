"""How a string a device supplied is shown to a person: control and invisible characters spelled out, never obeyed.

The one rule for every place such text reaches a reader: the GUI's labels and tables (fleetdesk.gui.text
re-exports it) and the log lines the core writes (a terminal obeys an escape sequence a device sent).
"""

from __future__ import annotations

import unicodedata

_ESCAPES = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}
_HIDDEN_CATEGORIES = {"Cf", "Zl", "Zp"}


def visible_text(text: str) -> str:
    """`text` as an operator should see it: control and invisible characters as escapes ("\\n", "\\x1b", "\\u202e")."""
    out: list[str] = []
    for ch in text:
        category = unicodedata.category(ch)
        if ch in _ESCAPES:
            out.append(_ESCAPES[ch])
        elif category == "Cc":
            out.append(f"\\x{ord(ch):02x}")
        elif category in _HIDDEN_CATEGORIES:
            out.append(f"\\u{ord(ch):04x}" if ord(ch) <= 0xFFFF else f"\\U{ord(ch):08x}")
        else:
            out.append(ch)
    return "".join(out)
