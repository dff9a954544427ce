#!/usr/bin/env bash
# Install HAProxy (Debian package `haproxy`) for the multi-replica tests and benchmark, when it is missing,
# and print the path of its binary (the only line on stdout). Needs root or sudo to install.
#   bash scripts/install-haproxy.sh && export PATH="$PATH:/usr/sbin"
# The package's own service is not started: the harness (eval/replica_harness.py) runs its own haproxy
# processes with the configuration it writes.
set -euo pipefail
log() { echo "install-haproxy: $*" >&2; }

find_bin() {
  command -v haproxy 2>/dev/null && return 0
  [ -x /usr/sbin/haproxy ] && { echo /usr/sbin/haproxy; return 0; }
  return 1
}

if BIN=$(find_bin); then
  echo "$BIN"
  exit 0
fi
SUDO=""
if [ "$(id -u)" -ne 0 ]; then
  command -v sudo >/dev/null 2>&1 || { log "haproxy missing and neither root nor sudo: cannot install"; exit 1; }
  SUDO="sudo"
fi
log "installing haproxy from Debian packages"
export DEBIAN_FRONTEND=noninteractive
# policy-rc.d 101: the package's postinst must not start a system haproxy (it would take port 80 / fail in CI)
POLICY=/usr/sbin/policy-rc.d
CREATED=""
if [ ! -e "$POLICY" ]; then
  printf '#!/bin/sh\nexit 101\n' | $SUDO tee "$POLICY" >/dev/null
  $SUDO chmod +x "$POLICY"
  CREATED=1
fi
trap '[ -n "$CREATED" ] && $SUDO rm -f "$POLICY"' EXIT
$SUDO apt-get update >&2 || log "apt-get update failed; trying the cached package lists"
$SUDO apt-get install -y --no-install-recommends haproxy >&2
BIN=$(find_bin) || { log "haproxy installed but its binary was not found"; exit 1; }
echo "$BIN"
