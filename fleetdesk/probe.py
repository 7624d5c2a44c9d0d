"""One SSH round trip that identifies a device and matches it to a profile."""
