"""Offline fleet reports in PDF, HTML, CSV and JSON."""
