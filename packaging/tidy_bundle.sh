#!/usr/bin/env bash
# The frozen bundle made fit to ship (packaging/build.sh runs it after PyInstaller, before packing): every ELF
# library stripped of its symbols (strip --strip-unneeded: what the dynamic loader needs stays), run paths that name
# the build machine (the pyenv Python's RUNPATH /root/.pyenv/...) removed, and libraries no longer executable.
# The two programs at the bundle's top are left as they are: PyInstaller appends its archive to the bootloader,
# which strip would cut off. A library that patchelf changed before (auditwheel's numpy.libs, pillow.libs, ...)
# can come out of strip with load segments the loader refuses ("ELF load command address/offset not
# page-aligned"): each stripped copy is checked and the original kept where it fails (lintian's overrides say so).
# Usage: packaging/tidy_bundle.sh BUNDLE
set -euo pipefail
BUNDLE=$1
for tool in strip patchelf; do
  command -v "$tool" >/dev/null || { echo "tidy_bundle.sh needs $tool (scripts/system-deps.sh dist)" >&2; exit 1; }
done

# Every PT_LOAD segment's address and file offset agree modulo the page size: what ld.so checks before mapping.
loadable() {
  local offset vaddr
  while read -r offset vaddr; do
    (( (vaddr - offset) % 4096 == 0 )) || return 1
  done < <(readelf -lW "$1" | awk '$1 == "LOAD" {print $2, $3}')
}

stripped=0 runpaths=0 kept=()
while IFS= read -r -d '' file; do
  head -c 4 "$file" | grep -q ELF || continue
  case $file in "$BUNDLE/fleetdesk" | "$BUNDLE/fleetdesk-gui") continue ;; esac
  chmod a-x "$file"
  # A run path is kept only where it points inside the bundle ($ORIGIN...); the rest named the build machine.
  runpath=$(patchelf --print-rpath "$file" 2>/dev/null || true)
  if [ -n "$runpath" ] && [[ $runpath != \$ORIGIN* ]]; then
    patchelf --remove-rpath "$file"
    runpaths=$((runpaths + 1))
  fi
  strip --strip-unneeded --preserve-dates -o "$file.stripped" "$file"
  if ! loadable "$file.stripped"; then
    rm "$file.stripped"
    kept+=("${file#"$BUNDLE"/}")
  elif [ "$(stat -c %s "$file.stripped")" -lt "$(stat -c %s "$file")" ]; then
    chmod --reference="$file" "$file.stripped"
    mv "$file.stripped" "$file"
    stripped=$((stripped + 1))
  else
    rm "$file.stripped"
  fi
done < <(find "$BUNDLE" -type f -name '*.so*' -print0 | sort -z)
echo "tidied $BUNDLE: $stripped libraries stripped, $runpaths build-machine run paths removed"
[ ${#kept[@]} -eq 0 ] || printf 'left unstripped (strip would break their load segments): %s\n' "${kept[*]}"
