# FleetDesk: `make run` starts the app, `make test` proves it, `make bench` measures it.
# Each target sets up .venv (and, as root, the Debian packages it needs) by itself.

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
BENCH_STAMP := $(VENV)/.installed-bench
DIST_STAMP := $(VENV)/.installed-dist

.PHONY: run test lint contracts bench lab-test dist dist-offline dist-reproducible system-deps-test system-deps-run system-deps-dist clean

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	@touch $(STAMP)

# The benchmarks' references (Ansible) on top of the dev install; `make test` never installs them.
$(BENCH_STAMP): $(STAMP) pyproject.toml
	$(BIN)/python -m pip install --quiet -e '.[bench]'
	@touch $(BENCH_STAMP)

# PyInstaller (the `dist` extra) on top of the dev install; only the dist targets install it.
$(DIST_STAMP): $(STAMP) pyproject.toml
	$(BIN)/python -m pip install --quiet -e '.[dist]'
	@touch $(DIST_STAMP)

system-deps-dist:
	@scripts/system-deps.sh dist

system-deps-run:
	@scripts/system-deps.sh run

system-deps-test:
	@scripts/system-deps.sh test

run: $(STAMP) system-deps-run
	$(BIN)/fleetdesk-gui

lint: $(STAMP)
	$(BIN)/ruff check fleetdesk tests benchmarks packaging
	$(BIN)/vermin --no-tips --violations -t=3.8- fleetdesk/agent
	$(BIN)/mypy fleetdesk

contracts: $(STAMP)
	$(BIN)/lint-imports

# The installers of this commit (packaging/build.sh): dist/fleetdesk-<version>-linux-x86_64.tar.gz,
# dist/fleetdesk_<version>_amd64.deb and the offline device-runtime pack dist/fleetdesk-runtimes_<version>_all.deb
# (its wheels downloaded with the venv's pip), then their sizes and the unpacked bundle's.
dist: $(DIST_STAMP) system-deps-dist
	packaging/build.sh $(BIN)/python

# What the installer test (tests/lab/test_installer_lab.py) installs: a build of these sources, kept in the cache
# folder and reused while what goes into the bundle does not change (a commit of tests or docs builds nothing), and
# the Debian packages its Depends pull into a clean bookworm root, downloaded here (an install step) because the
# test's root has no network. The download needs the .deb's Depends, so the build happens here too, before the test.
# The test's system set has the build's tools and lintian, which the test runs on the .deb.
dist-offline: $(DIST_STAMP) system-deps-test
	$(BIN)/python packaging/cached_build.py --build --offline-debs

# Two builds of this commit compared byte for byte (packaging/reproducible.py): each output's SHA-256 and, where two
# differ, the members that do. Two full builds: minutes each.
dist-reproducible: $(DIST_STAMP) system-deps-dist
	$(BIN)/python packaging/reproducible.py --python $(BIN)/python

test: $(STAMP) system-deps-test lint contracts dist-offline
	QT_QPA_PLATFORM=offscreen $(BIN)/python -m pytest $(PYTEST_ARGS)

bench: $(BENCH_STAMP) system-deps-test
	$(BIN)/python benchmarks/lab_up.py
	$(BIN)/python benchmarks/discovery_probe.py --devices 100 --with-push
	$(BIN)/python benchmarks/gui_fleet.py --seconds 30
	$(BIN)/python benchmarks/gil_handoff.py
	benchmarks/device_side.sh $(BIN)/python
	benchmarks/rollout.sh $(BIN)/python
	$(BIN)/python benchmarks/serve_batching.py --seconds 10
	$(BIN)/python benchmarks/telemetry_dashboard.py
	$(BIN)/python benchmarks/model_variants.py
	$(BIN)/python benchmarks/audit.py
	$(BIN)/python benchmarks/history_layout.py
	$(BIN)/python benchmarks/reports.py
	$(BIN)/python benchmarks/shared_inventory.py
	$(BIN)/python benchmarks/cold_start.py

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache .import_linter_cache .mypy_cache
