#!/usr/bin/env bash
# `make dist`: the frozen bundle (PyInstaller one-folder, packaging/fleetdesk.spec) as
# dist/fleetdesk-<version>-linux-x86_64.tar.gz, the Debian package dist/fleetdesk_<version>_amd64.deb
# (packaging/deb.sh), the offline device-runtime pack dist/fleetdesk-runtimes_<version>_all.deb (packaging/runtimes.py:
# it downloads the CPU device families' wheels with this Python's pip, a build step), then their sizes.
#
# Version from pyproject.toml only; the commit and SOURCE_DATE_EPOCH from git (the last commit), PYTHONHASHSEED=0,
# archives sorted, owned by root and clamped to SOURCE_DATE_EPOCH, gzip without a name or time.
# Usage: packaging/build.sh [PYTHON]   (default: .venv/bin/python; it needs the `dist` extra: pyinstaller)
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
PY=${1:-${PYTHON:-$ROOT/.venv/bin/python}}
BUILD=$ROOT/build/dist
DIST=$ROOT/dist

# The checkout's own answer (fleetdesk.__version__ and build_commit(): "-dirty" for uncommitted changes), so the
# bundle's `fleetdesk --version` says what the checkout's says.
read -r VERSION COMMIT < <("$PY" -c 'import fleetdesk; print(fleetdesk.__version__, fleetdesk.build_commit())')
SOURCE_DATE_EPOCH=$(git log -1 --format=%ct)
PYTHONHASHSEED=0
export FLEETDESK_VERSION=$VERSION FLEETDESK_COMMIT=$COMMIT SOURCE_DATE_EPOCH PYTHONHASHSEED
# The build must not read or write the builder's own settings, data or PyInstaller cache.
export PYINSTALLER_CONFIG_DIR=$BUILD/pyinstaller-config

started=$(date +%s)
rm -rf "$BUILD/work" "$BUILD/bundle"
mkdir -p "$BUILD" "$DIST"
echo "fleetdesk $VERSION (commit $COMMIT): freezing with $("$PY" -m PyInstaller --version 2>/dev/null || echo '?')"
"$PY" -m PyInstaller --noconfirm --clean --log-level WARN \
  --workpath "$BUILD/work" --distpath "$BUILD/bundle" packaging/fleetdesk.spec
bundle=$BUILD/bundle/fleetdesk
# PyInstaller links the Qt libraries the spec left out (Wayland, EGLFS) at the bundle's top before it drops them.
find "$bundle" -xtype l -delete
# Libraries stripped, the pyenv Python's run paths to this machine removed (packaging/tidy_bundle.sh).
"$ROOT/packaging/tidy_bundle.sh" "$bundle"
frozen=$(date +%s)

# Every file's time is the commit's, so the archives (and the .deb) depend on the sources only.
find "$bundle" -exec touch -h -d "@$SOURCE_DATE_EPOCH" {} +

tarball=$DIST/fleetdesk-$VERSION-linux-x86_64.tar.gz
stage=$BUILD/tar
rm -rf "$stage" && mkdir -p "$stage"
cp -a "$bundle" "$stage/fleetdesk-$VERSION"
tar --sort=name --mtime="@$SOURCE_DATE_EPOCH" --clamp-mtime --owner=0 --group=0 --numeric-owner \
  --pax-option=exthdr.name=%d/PaxHeaders/%f,delete=atime,delete=ctime \
  -C "$stage" -cf - "fleetdesk-$VERSION" | gzip -9 -n > "$tarball.partial"
mv "$tarball.partial" "$tarball"
rm -rf "$stage"

"$ROOT/packaging/deb.sh" "$bundle" "$VERSION" "$PY"
deb=$DIST/fleetdesk_${VERSION}_amd64.deb
"$PY" "$ROOT/packaging/runtimes.py" "$VERSION"
runtimes_deb=$DIST/fleetdesk-runtimes_${VERSION}_all.deb

echo "frozen in $((frozen - started)) s, packed in $(($(date +%s) - frozen)) s"
echo "bundle (unpacked): $(du -sb "$bundle" | cut -f1 | numfmt --to=iec --suffix=B) in $(find "$bundle" -type f | wc -l) files"
echo "$(basename "$tarball"): $(stat -c %s "$tarball" | numfmt --to=iec --suffix=B)"
echo "$(basename "$deb"): $(stat -c %s "$deb" | numfmt --to=iec --suffix=B)"
echo "$(basename "$runtimes_deb"): $(stat -c %s "$runtimes_deb" | numfmt --to=iec --suffix=B)"
