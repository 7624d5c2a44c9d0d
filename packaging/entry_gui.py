"""The frozen `fleetdesk-gui` program (packaging/fleetdesk.spec): the window."""

from fleetdesk.gui.app import main

raise SystemExit(main())
