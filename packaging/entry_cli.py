"""The frozen `fleetdesk` program (packaging/fleetdesk.spec): the command line."""

from fleetdesk.cli import main

raise SystemExit(main())
