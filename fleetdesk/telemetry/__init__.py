"""Telemetry: stream ingestion from device agents, ring buffers, downsampled history."""
