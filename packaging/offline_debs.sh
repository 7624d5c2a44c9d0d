#!/usr/bin/env bash
# An install step (it reaches the Debian mirror, as apt-get does): downloads the Debian packages that
# `apt-get install ./fleetdesk_<version>_amd64.deb` pulls into a clean bookworm root (the lab's cached amd64 image)
# into OUT, with a Packages index, so the installer test (tests/lab/test_installer_lab.py) installs the .deb there
# from a local file: repository with no network. Packages already in OUT are not fetched again.
# Usage: packaging/offline_debs.sh DEB ROOTFS_TARBALL OUT
set -euo pipefail
DEB=$(realpath "$1") TARBALL=$2 OUT=$3
export DEBIAN_FRONTEND=noninteractive LC_ALL=C.UTF-8
[ "$(id -u)" -eq 0 ] || { echo "offline_debs.sh: run as root (apt-get downloads into a folder of its own)" >&2; exit 1; }

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
# What the clean root has installed: its dpkg status, read from the image without unpacking it.
tar --zstd -xOf "$TARBALL" ./var/lib/dpkg/status > "$work/status"
mkdir -p "$OUT/partial"
fetch() {
  apt-get install --download-only -y -qq --no-install-recommends \
    -o Dir::State::status="$work/status" -o Dir::Cache::archives="$OUT" -o Debug::NoLocking=1 "$DEB"
}
if ! fetch; then
  apt-get update -qq
  fetch
fi
rm -rf "$OUT/partial" "$OUT/lock"
# The index a `deb [trusted=yes] file:... ./` source reads.
(cd "$OUT" && dpkg-scanpackages --multiversion . /dev/null 2>/dev/null > Packages)
echo "$(find "$OUT" -name '*.deb' | wc -l) packages for a clean bookworm root in $OUT ($(du -sh "$OUT" | cut -f1))"
