"""The on-device agent: standard library only, Python >= 3.8, pushed to devices as files."""
