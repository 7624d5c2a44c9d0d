"""One file per schema revision, oldest first: 0001 devices and host keys, 0002 groups, 0003 key files."""
