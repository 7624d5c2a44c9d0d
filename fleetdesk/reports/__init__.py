"""Offline fleet reports in PDF, HTML, CSV and JSON, signed by the fleet key.

`export_report(access, ReportRequest(...), key)` is what the CLI and the window call: the permission checked, the
report gathered, written and signed, the export audited (export.py). `make_report(kind, …)` (gather.py) gathers one
report type from the inventory (fleet.py, rollout.py, health.py, models.py, audit.py) into a format-free `Report`
(document.py); `write_report` renders it (render_*.py), signs it (signature.py) and writes it atomically
(output.py); `verify_report` checks a written one with the public key. Rendering is CPU work: callers on an event
loop run it in a thread.
formats.py names the formats and paper sizes. Import each name from its module: this package loads none of them,
so the command line's parser, which needs only formats.py, does not load the renderers and the artifact store.
"""
