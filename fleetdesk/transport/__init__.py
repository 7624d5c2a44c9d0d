"""SSH to devices: connection pool, run, resumable verified push, host-key trust, credentials."""
