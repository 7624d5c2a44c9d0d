#!/usr/bin/env bash
# dist/fleetdesk_<version>_amd64.deb from a frozen bundle (packaging/build.sh calls it): the bundle in
# /opt/fleetdesk, /usr/bin/fleetdesk and /usr/bin/fleetdesk-gui, the desktop entry, hicolor icons (the SVG and PNGs
# drawn from it by Qt), AppStream metainfo, the copyright file, the changelog, lintian's overrides, a postrm that
# purges /opt/fleetdesk, and Depends on the Debian packages that hold the system libraries the bundle's ELF files
# link against (dpkg-shlibdeps).
# Usage: packaging/deb.sh BUNDLE VERSION PYTHON   (SOURCE_DATE_EPOCH set by build.sh)
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
BUNDLE=$1 VERSION=$2 PY=$3
: "${SOURCE_DATE_EPOCH:?set by packaging/build.sh}"
APP_ID=org.fleetdesk.FleetDesk
LINUX=$ROOT/packaging/linux
STAGE=$ROOT/build/dist/deb
DEB=$ROOT/dist/fleetdesk_${VERSION}_amd64.deb
export LC_ALL=C.UTF-8

rm -rf "$STAGE" && mkdir -p "$STAGE/root"
R=$STAGE/root
install -d "$R/opt" "$R/usr/bin" "$R/usr/share/applications" "$R/usr/share/metainfo" "$R/usr/share/doc/fleetdesk" \
  "$R/DEBIAN"
cp -a "$BUNDLE" "$R/opt/fleetdesk"
ln -s /opt/fleetdesk/fleetdesk "$R/usr/bin/fleetdesk"
ln -s /opt/fleetdesk/fleetdesk-gui "$R/usr/bin/fleetdesk-gui"
install -m 644 "$LINUX/$APP_ID.desktop" "$R/usr/share/applications/$APP_ID.desktop"
sed -e "s/@VERSION@/$VERSION/" -e "s/@DATE@/$(date -u -d "@$SOURCE_DATE_EPOCH" +%F)/" \
  "$LINUX/$APP_ID.metainfo.xml" > "$R/usr/share/metainfo/$APP_ID.metainfo.xml"
chmod 644 "$R/usr/share/metainfo/$APP_ID.metainfo.xml"
install -m 644 "$LINUX/copyright" "$R/usr/share/doc/fleetdesk/copyright"
# Debian policy's changelog (changelog.gz: a version without a Debian revision is a native package's), dated by the
# commit and compressed without a name or time (reproducible).
sed -e "s/@VERSION@/$VERSION/g" -e "s/@COMMIT@/${FLEETDESK_COMMIT:-unknown}/" \
  -e "s/@DATE@/$(date -u -R -d "@$SOURCE_DATE_EPOCH")/" "$LINUX/changelog" \
  | gzip -9 -n > "$R/usr/share/doc/fleetdesk/changelog.gz"
chmod 644 "$R/usr/share/doc/fleetdesk/changelog.gz"
# What lintian reports of a frozen bundle in /opt and why it is so (each override says its reason).
install -D -m 644 "$LINUX/lintian-overrides" "$R/usr/share/lintian/overrides/fleetdesk"
# The icon: the app's own SVG, and PNGs drawn from it.
svg=$ROOT/resources/icons/fleetdesk.svg
install -D -m 644 "$svg" "$R/usr/share/icons/hicolor/scalable/apps/$APP_ID.svg"
for size in 48 128 256; do
  install -d "$R/usr/share/icons/hicolor/${size}x${size}/apps"
done
QT_QPA_PLATFORM=offscreen "$PY" "$ROOT/packaging/render_icon.py" "$svg" "$R/usr/share/icons/hicolor" "$APP_ID" 48 128 256
install -m 755 "$LINUX/postrm" "$R/DEBIAN/postrm"

# Depends: dpkg-shlibdeps over every ELF file of the bundle. Libraries the bundle carries are found in its own
# folders (-l) and need no package; what it finds outside them is the system's, named by package and version.
mkdir -p "$STAGE/shlibs/debian"
printf 'Source: fleetdesk\n\nPackage: fleetdesk\nArchitecture: amd64\n' > "$STAGE/shlibs/debian/control"
mapfile -t elves < <(find "$R/opt/fleetdesk" -type f \( -name '*.so*' -o -perm -u+x \) -exec sh -c \
  'head -c 4 "$1" | grep -q "ELF" && echo "$1"' _ {} \; | sort)
mapfile -t libdirs < <(printf '%s\n' "${elves[@]}" | xargs -n1 dirname | sort -u)
depends=$(cd "$STAGE/shlibs" && dpkg-shlibdeps -O --ignore-missing-info --warnings=0 \
  $(printf -- '-l%s ' "${libdirs[@]}") "${elves[@]}" 2>"$STAGE/shlibdeps.log" | sed -n 's/^shlibs:Depends=//p')
[ -n "$depends" ] || { cat "$STAGE/shlibdeps.log" >&2; echo "dpkg-shlibdeps found no dependency" >&2; exit 1; }

installed_kb=$(du -sk --apparent-size "$R" --exclude=DEBIAN | cut -f1)
cat > "$R/DEBIAN/control" <<EOF
Package: fleetdesk
Version: $VERSION
Architecture: amd64
Maintainer: FleetDesk authors <fleetdesk@example.org>
Installed-Size: $installed_kb
Depends: $depends
Section: admin
Priority: optional
Description: run a fleet of edge AI devices from one laptop
 FleetDesk finds the edge AI devices of a factory floor on the LAN (NVIDIA
 Jetsons, Raspberry Pis, industrial PCs), trusts them over SSH, installs an
 inference runtime and optimized ONNX models on them, plots their live
 telemetry and rolls new models out in stages with health gates, pause and
 rollback. No cloud, no internet needed.
 .
 This package holds a frozen bundle (Python, Qt and ONNX Runtime included)
 in /opt/fleetdesk, and the fleetdesk and fleetdesk-gui commands.
EOF
(cd "$R" && find . -path ./DEBIAN -prune -o -type f -printf '%P\0' | sort -z | xargs -0 md5sum) > "$R/DEBIAN/md5sums"
chmod 644 "$R/DEBIAN/control" "$R/DEBIAN/md5sums"
# Directories 755, files 644 unless executable (the bundle's programs and libraries keep their x bit).
find "$R" -type d -exec chmod 755 {} +
find "$R" -exec touch -h -d "@$SOURCE_DATE_EPOCH" {} +
dpkg-deb --root-owner-group -Zxz --build "$R" "$DEB.partial" >/dev/null
mv "$DEB.partial" "$DEB"
echo "$(basename "$DEB"): Depends: $depends"
