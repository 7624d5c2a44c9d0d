"""The report formats and paper sizes FleetDesk writes, by name: what the command line and the window offer, known
without loading a renderer (the command line's parser needs them for every command)."""

from __future__ import annotations

FORMATS = ("pdf", "html", "csv", "json")
PAPERS = ("a4", "letter")  # render_pdf.PAGE_SIZES gives each its size
