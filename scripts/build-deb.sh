#!/bin/sh
# Build the Debian package fleetcast_<version>_<arch>.deb with dpkg-deb, from a built
# tree (npm install has compiled dist/ and the addon):
#
#   npm run deb [-- --out DIR]
#
# It holds the app in /usr/lib/fleetcast (dist/src, the built addon, the run-time
# node_modules), /usr/bin/fleetcast, the systemd units, man pages and bash completion
# made from --help (scripts/gen-docs.js), the example configs and the MIT license. It
# depends on Debian's nodejs (>= 20). Its postinst adds the system group fleetcast
# that reads /etc/fleetcast (the units' dynamic user joins it), and writes the example
# configs there when none exist. The units are installed, not enabled: the config has
# to be edited first.
set -eu

OUT=""
while [ $# -gt 0 ]; do
  case "$1" in
    --out) OUT="${2:?--out needs a directory}"; shift 2 ;;
    -h|--help) sed -n '2,13p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "build-deb: unknown option $1 (try --help)" >&2; exit 64 ;;
  esac
done

SRC=$(cd "$(dirname "$0")/.." && pwd)
OUT=${OUT:-$SRC}
for f in dist/src/cli/main.js build/Release/fleetcast_native.node; do
  if [ ! -f "$SRC/$f" ]; then
    echo "build-deb: $SRC/$f is missing; run 'npm install' (it builds dist/ and the addon) first" >&2
    exit 66
  fi
done
command -v dpkg-deb >/dev/null || { echo "build-deb: dpkg-deb not found (Debian package dpkg)" >&2; exit 69; }

VERSION=$(node -p 'require(process.argv[1]).version' "$SRC/package.json")
ARCH=$(dpkg --print-architecture)
DEB="$OUT/fleetcast_${VERSION}_${ARCH}.deb"
STAGE=$(mktemp -d "${TMPDIR:-/tmp}/fleetcast-deb.XXXXXX")
trap 'rm -rf "$STAGE"' EXIT INT TERM
ROOT="$STAGE/root"
APP="$ROOT/usr/lib/fleetcast"

# The app.
mkdir -p "$APP/dist" "$APP/build/Release" "$APP/node_modules" "$ROOT/usr/bin"
cp -a "$SRC/package.json" "$SRC/bin" "$APP/"
cp -a "$SRC/dist/src" "$APP/dist/"
find "$APP/dist" -name '*.map' -delete
cp -a "$SRC/build/Release/fleetcast_native.node" "$APP/build/Release/"
ln -s ../lib/fleetcast/bin/fleetcast.js "$ROOT/usr/bin/fleetcast"

# Production node_modules: the run-time dependency closure from npm's own tree, less
# node-gyp and node-addon-api, which only build the addon (already built above).
(cd "$SRC" && npm ls --omit=dev --all --json 2>/dev/null || true) | node -e '
  const tree = JSON.parse(require("fs").readFileSync(0, "utf8"));
  const buildOnly = new Set(["node-gyp", "node-addon-api"]);
  const seen = new Set();
  (function walk(deps, top) {
    for (const [name, d] of Object.entries(deps || {})) {
      if (top && buildOnly.has(name)) continue;
      if (d.missing || seen.has(name)) continue;
      seen.add(name);
      walk(d.dependencies, false);
    }
  })(tree.dependencies, true);
  process.stdout.write([...seen].sort().join("\n") + "\n");
' > "$STAGE/modules"
while read -r m; do
  [ -n "$m" ] || continue
  if [ -d "$SRC/node_modules/$m" ]; then
    mkdir -p "$APP/node_modules/$(dirname "$m")"
    cp -a "$SRC/node_modules/$m" "$APP/node_modules/$m"
  fi
done < "$STAGE/modules"
# Build leftovers of native dependencies (objects, sources of the build) are not needed to run.
find "$APP/node_modules" -type d \( -name obj.target -o -name .deps \) -prune -exec rm -rf {} +

# Units, with the Documentation= that this package's man pages make real.
mkdir -p "$ROOT/lib/systemd/system"
install -m 0644 "$SRC/systemd/fleetcast-agent.service" "$SRC/systemd/fleetcast-server.service" "$ROOT/lib/systemd/system/"

# Examples (postinst copies them to /etc/fleetcast; /usr/share/doc may be excluded by dpkg).
mkdir -p "$ROOT/usr/share/fleetcast"
install -m 0644 "$SRC/systemd/agent.yaml.example" "$SRC/systemd/server.yaml.example" \
  "$SRC/systemd/fleetcast-agent.service.d/igmp-querier.conf.example" "$ROOT/usr/share/fleetcast/"

# Man pages and bash completion from --help.
node "$SRC/scripts/gen-docs.js" "$STAGE/docs" >/dev/null
mkdir -p "$ROOT/usr/share/man/man1" "$ROOT/usr/share/bash-completion/completions"
for m in "$STAGE"/docs/man1/*.1; do gzip -9n < "$m" > "$ROOT/usr/share/man/man1/$(basename "$m").gz"; done
install -m 0644 "$STAGE/docs/bash-completion/fleetcast" "$ROOT/usr/share/bash-completion/completions/fleetcast"

# License and docs.
DOC="$ROOT/usr/share/doc/fleetcast"
mkdir -p "$DOC"
{
  echo 'Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/'
  echo 'Upstream-Name: fleetcast'
  echo
  echo 'Files: *'
  echo "Copyright: $(sed -n 's/^Copyright (c) //p' "$SRC/LICENSE")"
  echo 'License: MIT'
  sed -n '/^Permission/,$p' "$SRC/LICENSE" | sed 's/^$/./; s/^/ /'
  echo
  echo 'Files: usr/lib/fleetcast/node_modules/*'
  echo 'Copyright: their authors (see each package.json and LICENSE file)'
  echo 'License: see each package; all are MIT, ISC or BSD-style'
} > "$DOC/copyright"
gzip -9n < "$SRC/README.md" > "$DOC/README.md.gz"

# Shared-library dependencies of the native addons.
SHLIBS=""
if command -v dpkg-shlibdeps >/dev/null; then
  mkdir -p "$STAGE/shl/debian"
  printf 'Source: fleetcast\n\nPackage: fleetcast\nArchitecture: any\n' > "$STAGE/shl/debian/control"
  SHLIBS=$(cd "$STAGE/shl" && dpkg-shlibdeps -O $(find "$APP" -name '*.node') 2>/dev/null | sed -n 's/^shlibs:Depends=//p') || SHLIBS=""
fi
[ -n "$SHLIBS" ] || SHLIBS="libc6, libstdc++6"

mkdir -p "$ROOT/DEBIAN"
SIZE=$(du -sk --exclude=DEBIAN "$ROOT" | cut -f1)
cat > "$ROOT/DEBIAN/control" <<EOF
Package: fleetcast
Version: $VERSION
Architecture: $ARCH
Maintainer: fleetcast maintainers <maintainers@users.noreply.b-seed-6c2464bb.example>
Installed-Size: $SIZE
Depends: nodejs (>= 20), passwd, $SHLIBS
Section: net
Priority: optional
Description: deliver releases to fleets of edge Linux boxes by LAN multicast
 fleetcast delivers the same release (firmware, OS update, model or media
 file) to a fleet of edge boxes while each byte crosses the WAN about once
 per LAN group: the origin leases each unit to one agent of a group, which
 multicasts it to its peers; gaps are repaired with NACKs, and everything is
 verified against an Ed25519-signed manifest.
 .
 This package holds the agent and origin server as systemd services
 (fleetcast-agent, fleetcast-server), configured in /etc/fleetcast.
EOF

cat > "$ROOT/DEBIAN/postinst" <<'EOF'
#!/bin/sh
set -e
if [ "$1" = configure ]; then
  # The units run as a dynamic user that reads /etc/fleetcast through this group.
  getent group fleetcast >/dev/null || groupadd --system fleetcast
  install -d -m 2750 -o root -g fleetcast /etc/fleetcast
  chgrp fleetcast /etc/fleetcast && chmod 2750 /etc/fleetcast
  for kind in agent server; do
    if [ ! -e /etc/fleetcast/$kind.yaml ]; then
      install -m 0640 -o root -g fleetcast /usr/share/fleetcast/$kind.yaml.example /etc/fleetcast/$kind.yaml
      echo "fleetcast: wrote /etc/fleetcast/$kind.yaml: edit it, check it with 'fleetcast config check /etc/fleetcast/$kind.yaml'"
    fi
  done
  if [ -d /run/systemd/system ]; then
    systemctl --system daemon-reload >/dev/null || true
    # An upgrade restarts what runs; a first install starts nothing (the config needs editing).
    if [ -n "${2:-}" ]; then systemctl try-restart fleetcast-agent.service fleetcast-server.service >/dev/null || true; fi
  fi
  [ -n "${2:-}" ] || echo "fleetcast: start with 'systemctl enable --now fleetcast-agent' (or fleetcast-server on the origin)"
fi
exit 0
EOF

cat > "$ROOT/DEBIAN/prerm" <<'EOF'
#!/bin/sh
set -e
if [ "$1" = remove ] && [ -d /run/systemd/system ]; then
  systemctl stop fleetcast-agent.service fleetcast-server.service >/dev/null 2>&1 || true
  systemctl disable fleetcast-agent.service fleetcast-server.service >/dev/null 2>&1 || true
fi
exit 0
EOF

cat > "$ROOT/DEBIAN/postrm" <<'EOF'
#!/bin/sh
set -e
if [ -d /run/systemd/system ]; then systemctl --system daemon-reload >/dev/null || true; fi
# Purge removes the configs postinst wrote; keys, tokens and certificates an operator put
# in /etc/fleetcast, the group and the state in /var/lib stay.
if [ "$1" = purge ]; then
  rm -f /etc/fleetcast/agent.yaml /etc/fleetcast/server.yaml
  rmdir /etc/fleetcast 2>/dev/null || true
fi
exit 0
EOF
chmod 0755 "$ROOT/DEBIAN/postinst" "$ROOT/DEBIAN/prerm" "$ROOT/DEBIAN/postrm"

mkdir -p "$OUT"
dpkg-deb --root-owner-group -Zxz --build "$ROOT" "$DEB" >/dev/null
echo "$DEB"
