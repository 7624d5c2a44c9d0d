"""How a string a device supplied is shown: control and invisible characters spelled out, never obeyed.

The one rule every widget uses (table cells, the detail pane, dialogs, the activity log): fleetdesk.text's.
Tooltips and rich-text labels read HTML, so text reaches them through `tooltip_text` and `markup_text` here.
"""

from __future__ import annotations

import html

# The rule itself lives in the core, which writes device text to its logs too; widgets keep importing it from here.
from fleetdesk.text import visible_text as visible_text

# A block that keeps every space and line break as typed and breaks lines nowhere else, as a plain-text tooltip
# does (pre-wrap let Qt's tooltip wrap a short name at its "/" into three narrow lines).
_LITERAL_BLOCK = "<p style='white-space:pre'>{}</p>"


def markup_text(text: str) -> str:
    """`text` for a place that reads HTML (a rich-text label, a plot title): spelled out by `visible_text`, then
    escaped, so a device named "<font color=green>trusted</font>" shows those characters instead of green."""
    return html.escape(visible_text(text), quote=False)


def tooltip_text(text: str) -> str:
    """`text` for every tooltip (`setToolTip`, an item model's ToolTipRole): what the operator reads is `text`.

    Qt guesses per tooltip whether it is HTML (`Qt.mightBeRichText`: a known tag early on the first line), so a
    tooltip quoting a device's name would render that name's markup. Every tooltip goes as HTML instead, each of
    its lines escaped by `markup_text` (line breaks stay breaks): there is nothing left for Qt to guess.
    """
    if not text:
        return ""  # no tooltip at all, not an empty box
    return _LITERAL_BLOCK.format("\n".join(markup_text(line) for line in text.split("\n")))
