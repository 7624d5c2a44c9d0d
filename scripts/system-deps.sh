#!/usr/bin/env bash
# Installs the Debian packages FleetDesk's tests and lab need, when missing and when run as root.
# Usage: scripts/system-deps.sh [test|run|dist]
set -euo pipefail
what=${1:-test}

# Qt's offscreen platform needs these shared libraries.
run_pkgs=(libgl1 libegl1 libxkbcommon0 libfontconfig1 libglib2.0-0 libdbus-1-3)
# Qt's xcb platform (a real X display): what `ldd` shows PySide6's plugins/platforms/libqxcb.so,
# lib/libQt6XcbQpa.so.6 and plugins/xcbglintegrations/*.so link against. Without libxcb-cursor0 Qt >= 6.5
# aborts with "no Qt platform plugin could be initialized". Qt 6 no longer uses Xinerama (RandR only):
# libxcb-xinerama0 is not needed.
run_pkgs+=(libx11-6 libx11-xcb1 libxcb1 libxkbcommon-x11-0 libxcb-cursor0 libxcb-icccm4 libxcb-keysyms1
           libxcb-image0 libxcb-util1 libxcb-randr0 libxcb-render0 libxcb-render-util0 libxcb-shape0
           libxcb-shm0 libxcb-sync1 libxcb-xfixes0 libxcb-xkb1 libxcb-glx0)
# The lab: namespaces (iproute2), real sshd, debootstrap + qemu-user for arm64 devices, zstd tarballs;
# a real Secret Service (gnome-keyring on a private D-Bus) and a real PostgreSQL for the inventory tests;
# systemd for `systemd-analyze verify` of the unit provisioning installs (no systemd runs here).
test_pkgs=(iproute2 iptables openssh-server openssh-client debootstrap qemu-user-static binfmt-support zstd
           util-linux mount procps xz-utils systemd
           gnome-keyring dbus-daemon dbus-x11 postgresql)
# tests/unit/test_reports.py: poppler's pdftotext, pdfinfo and pdftoppm read the PDF reports back; headless
# chromium opens the HTML report (no script may run) and takes its screenshot.
test_pkgs+=(poppler-utils chromium)
# tests/gui/test_real_display.py: a real X server, xwininfo/xprop (x11-utils) and xwd (x11-apps).
test_pkgs+=(xvfb x11-utils x11-apps)
# tests/lab/test_installer_lab.py and the build it installs (`make dist-offline`): dpkg-shlibdeps and
# dpkg-scanpackages (dpkg-dev), strip (binutils) and patchelf for the bundle's libraries, desktop-file-validate
# (desktop-file-utils), appstreamcli (appstream), lintian (the test's check of the .deb).
test_pkgs+=(dpkg-dev binutils patchelf desktop-file-utils appstream lintian)

# `make dist` (packaging/): dpkg-shlibdeps and dpkg-scanpackages (dpkg-dev), strip (binutils) and patchelf
# (packaging/tidy_bundle.sh), and the checks of what the .deb carries: desktop-file-validate (desktop-file-utils),
# appstreamcli (appstream), lintian.
dist_pkgs=(dpkg-dev binutils patchelf xz-utils desktop-file-utils appstream lintian)

pkgs=("${run_pkgs[@]}")
[ "$what" = test ] && pkgs+=("${test_pkgs[@]}")
[ "$what" = dist ] && pkgs+=("${dist_pkgs[@]}")

if ! command -v dpkg-query >/dev/null 2>&1; then
  # Not Debian: nothing here can check; name what to look for and let the app start.
  echo "FleetDesk: not a Debian system; make sure the equivalents of these packages are installed: ${pkgs[*]}" >&2
  exit 0
fi

missing=()
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
[ ${#missing[@]} -eq 0 ] && exit 0

if [ "$(id -u)" -ne 0 ]; then
  # Stop here, with the line that fixes it, rather than let Qt abort later with a plugin error.
  echo "FleetDesk needs these Debian packages: ${missing[*]}" >&2
  echo "install them with: sudo apt-get install ${missing[*]}" >&2
  exit 1
fi
echo "installing Debian packages: ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
# policy-rc.d: installing a daemon package must not start it on this machine's network.
cleanup() { rm -f /usr/sbin/policy-rc.d; }
[ -e /usr/sbin/policy-rc.d ] || { printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d; chmod 755 /usr/sbin/policy-rc.d; trap cleanup EXIT; }
apt-get install -y -qq --no-install-recommends "${missing[@]}"
