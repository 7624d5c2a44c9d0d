"""`python -m fleetdesk` is the `fleetdesk` command line."""

from fleetdesk.cli import main

raise SystemExit(main())
