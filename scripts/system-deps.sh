#!/usr/bin/env bash
# Installs the Debian packages FleetDesk's tests and lab need, when missing and when run as root.
# Usage: scripts/system-deps.sh [test|run]
set -euo pipefail
what=${1:-test}

# Qt's offscreen platform and xcb need these shared libraries.
run_pkgs=(libgl1 libegl1 libxkbcommon0 libfontconfig1 libglib2.0-0 libdbus-1-3)
# The lab: namespaces (iproute2), real sshd, debootstrap + qemu-user for arm64 devices, zstd tarballs;
# a real Secret Service (gnome-keyring on a private D-Bus) and a real PostgreSQL for the inventory tests;
# systemd for `systemd-analyze verify` of the unit provisioning installs (no systemd runs here).
test_pkgs=(iproute2 iptables openssh-server openssh-client debootstrap qemu-user-static binfmt-support zstd
           util-linux mount procps xz-utils systemd
           gnome-keyring dbus-daemon dbus-x11 postgresql)

pkgs=("${run_pkgs[@]}")
[ "$what" = test ] && pkgs+=("${test_pkgs[@]}")

missing=()
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
[ ${#missing[@]} -eq 0 ] && exit 0

if [ "$(id -u)" -ne 0 ]; then
  echo "FleetDesk needs these Debian packages: ${missing[*]}" >&2
  echo "install them with: sudo apt-get install ${missing[*]}" >&2
  [ "$what" = test ] && exit 1 || exit 0
fi
echo "installing Debian packages: ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
# policy-rc.d: installing a daemon package must not start it on this machine's network.
cleanup() { rm -f /usr/sbin/policy-rc.d; }
[ -e /usr/sbin/policy-rc.d ] || { printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d; chmod 755 /usr/sbin/policy-rc.d; trap cleanup EXIT; }
apt-get install -y -qq --no-install-recommends "${missing[@]}"
