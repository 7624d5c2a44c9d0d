"""Inventory tests: SQLite and a real PostgreSQL."""
