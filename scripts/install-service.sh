#!/bin/sh
# Install fleetcast on this box as systemd services: the built package under
# /opt/fleetcast, /usr/local/bin/fleetcast, the units, and example configs in
# /etc/fleetcast (an existing config is never overwritten).
# The services run as a dynamic user (DynamicUser=yes) that reads /etc/fleetcast through
# the system group fleetcast (SupplementaryGroups=fleetcast): the directory is 2750
# root:fleetcast, so files put there later take the group too; keep them 0640.
#
#   npm install && sudo npm run install-service [-- --igmp-querier] [-- --destdir DIR]
#
# --destdir DIR   install below DIR instead of / (packaging, tests); no systemctl
# --igmp-querier  also install the drop-in that grants CAP_NET_RAW for igmp_querier
# --enable        systemctl enable --now fleetcast-agent afterwards
set -eu

DESTDIR=""
IGMP=0
ENABLE=0
while [ $# -gt 0 ]; do
  case "$1" in
    --destdir) DESTDIR="${2:?--destdir needs a directory}"; shift 2 ;;
    --igmp-querier) IGMP=1; shift ;;
    --enable) ENABLE=1; shift ;;
    -h|--help) sed -n '2,13p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "install-service: unknown option $1 (try --help)" >&2; exit 64 ;;
  esac
done

SRC=$(cd "$(dirname "$0")/.." && pwd)
if [ ! -f "$SRC/dist/src/cli/main.js" ]; then
  echo "install-service: $SRC is not built; run 'npm install' first" >&2
  exit 66
fi
if [ -z "$DESTDIR" ] && [ "$(id -u)" -ne 0 ]; then
  echo "install-service: run as root (or give --destdir DIR)" >&2
  exit 77
fi

OPT="$DESTDIR/opt/fleetcast"
UNITS="$DESTDIR/etc/systemd/system"
ETC="$DESTDIR/etc/fleetcast"

echo "installing fleetcast from $SRC into ${DESTDIR:-/}"
mkdir -p "$OPT" "$UNITS" "$ETC" "$DESTDIR/usr/local/bin"
# The group the units' dynamic user reads /etc/fleetcast through (--destdir: the
# package's own scripts create it on the target, so only the mode is set here).
GROUP=fleetcast
if [ -z "$DESTDIR" ]; then
  getent group "$GROUP" >/dev/null || groupadd --system "$GROUP"
  chgrp "$GROUP" "$ETC"
fi
chmod 2750 "$ETC"
# The package itself, outside /home and /root (the units use ProtectHome=yes).
rm -rf "$OPT.new"
mkdir -p "$OPT.new"
mkdir -p "$OPT.new/dist"
cp -a "$SRC/package.json" "$SRC/bin" "$OPT.new/"
cp -a "$SRC/dist/src" "$OPT.new/dist/"
[ -d "$SRC/build/Release" ] && mkdir -p "$OPT.new/build" && cp -a "$SRC/build/Release" "$OPT.new/build/"
mkdir -p "$OPT.new/node_modules"
# Run-time dependencies only (node-gyp and node-addon-api build the addon, already built).
for dep in yaml undici raw-socket; do
  [ -d "$SRC/node_modules/$dep" ] && cp -a "$SRC/node_modules/$dep" "$OPT.new/node_modules/"
done
rm -rf "$OPT.old"
[ -d "$OPT" ] && mv "$OPT" "$OPT.old"
mv "$OPT.new" "$OPT"
rm -rf "$OPT.old"
ln -sf /opt/fleetcast/bin/fleetcast.js "$DESTDIR/usr/local/bin/fleetcast"
# Man pages (the units' Documentation=) and bash completion, made from --help.
MAN="$DESTDIR/usr/local/share/man/man1"
mkdir -p "$MAN" "$DESTDIR/usr/local/share/bash-completion/completions"
DOCS=$(mktemp -d)
node "$SRC/scripts/gen-docs.js" "$DOCS" >/dev/null
for m in "$DOCS"/man1/*.1; do gzip -9n < "$m" > "$MAN/$(basename "$m").gz"; done
install -m 0644 "$DOCS/bash-completion/fleetcast" "$DESTDIR/usr/local/share/bash-completion/completions/fleetcast"
rm -rf "$DOCS"

install -m 0644 "$SRC/systemd/fleetcast-agent.service" "$SRC/systemd/fleetcast-server.service" "$UNITS/"
if [ "$IGMP" = 1 ]; then
  mkdir -p "$UNITS/fleetcast-agent.service.d"
  install -m 0644 "$SRC/systemd/fleetcast-agent.service.d/igmp-querier.conf.example" "$UNITS/fleetcast-agent.service.d/igmp-querier.conf"
fi
for kind in agent server; do
  if [ -e "$ETC/$kind.yaml" ]; then
    echo "kept your $ETC/$kind.yaml; the current example is $ETC/$kind.yaml.example"
  else
    install -m 0640 "$SRC/systemd/$kind.yaml.example" "$ETC/$kind.yaml"
    [ -z "$DESTDIR" ] && chgrp "$GROUP" "$ETC/$kind.yaml"
    echo "wrote $ETC/$kind.yaml: edit it, then check it with: fleetcast config check $ETC/$kind.yaml"
  fi
  install -m 0644 "$SRC/systemd/$kind.yaml.example" "$ETC/$kind.yaml.example"
done

if [ -z "$DESTDIR" ] && [ -d /run/systemd/system ]; then
  systemctl daemon-reload
  [ "$ENABLE" = 1 ] && systemctl enable --now fleetcast-agent
  echo "start with: systemctl enable --now fleetcast-agent (or fleetcast-server on the origin)"
  echo "files the services read in $ETC (token, keys, certificates) must be readable by group $GROUP (0640 root:$GROUP)"
else
  echo "systemd is not running here (or --destdir was given): not reloading it"
fi
