#!/usr/bin/env bash
# Start a throw-away PostgreSQL server for the store tests and print its URL (the only line on stdout).
#   url=$(bash scripts/start-postgres.sh) && export XINFANG_TEST_POSTGRES_URL="$url"
# Installs Debian's `postgresql` when no server binaries are found (needs root or sudo), initialises a cluster
# in $XINFANG_PG_DIR (default /tmp/xinfang-pg), listens on 127.0.0.1:$XINFANG_PG_PORT (default 55432) only,
# trust auth for local connections, and creates the database xinfang_test. Idempotent: a running server is reused.
# Stop it with: bash scripts/start-postgres.sh --stop
set -euo pipefail
PGDIR="${XINFANG_PG_DIR:-/tmp/xinfang-pg}"
PORT="${XINFANG_PG_PORT:-55432}"
DB=xinfang_test
log() { echo "start-postgres: $*" >&2; }

find_bin() {
  local d
  for d in /usr/lib/postgresql/*/bin; do
    [ -x "$d/initdb" ] && { echo "$d"; return 0; }
  done
  command -v initdb >/dev/null 2>&1 && { dirname "$(command -v initdb)"; return 0; }
  return 1
}

SUDO=""
[ "$(id -u)" -ne 0 ] && command -v sudo >/dev/null 2>&1 && SUDO="sudo"

if ! BIN=$(find_bin); then
  log "installing postgresql from Debian packages"
  export DEBIAN_FRONTEND=noninteractive
  $SUDO apt-get update >&2
  $SUDO apt-get install -y --no-install-recommends postgresql >&2
  BIN=$(find_bin) || { log "postgresql installed but initdb not found"; exit 1; }
fi

# The server refuses to run as root: run it as the `postgres` user (created by the package) or our own.
RUNAS=""
if [ "$(id -u)" -eq 0 ]; then
  if ! id postgres >/dev/null 2>&1; then
    useradd --system --no-create-home --shell /usr/sbin/nologin postgres
  fi
  RUNAS="runuser -u postgres --"
fi

if [ "${1:-}" = "--stop" ]; then
  [ -d "$PGDIR/data" ] && $RUNAS "$BIN/pg_ctl" -D "$PGDIR/data" -m fast stop >&2 || true
  exit 0
fi

mkdir -p "$PGDIR"
[ -n "$RUNAS" ] && chown postgres "$PGDIR"
if [ ! -f "$PGDIR/data/PG_VERSION" ]; then
  log "initdb in $PGDIR/data"
  $RUNAS "$BIN/initdb" -D "$PGDIR/data" -U postgres --auth=trust --encoding=UTF8 --locale=C.UTF-8 >&2 \
    || $RUNAS "$BIN/initdb" -D "$PGDIR/data" -U postgres --auth=trust --encoding=UTF8 --locale=C >&2
fi
if ! $RUNAS "$BIN/pg_ctl" -D "$PGDIR/data" status >/dev/null 2>&1; then
  log "starting on 127.0.0.1:$PORT"
  $RUNAS "$BIN/pg_ctl" -D "$PGDIR/data" -l "$PGDIR/server.log" -w -t 60 \
    -o "-p $PORT -c listen_addresses=127.0.0.1 -k $PGDIR -c fsync=on" start >&2
fi
if ! $RUNAS "$BIN/psql" -h 127.0.0.1 -p "$PORT" -U postgres -tAc "SELECT 1 FROM pg_database WHERE datname='$DB'" \
     | grep -q 1; then
  $RUNAS "$BIN/createdb" -h 127.0.0.1 -p "$PORT" -U postgres "$DB" >&2
fi
echo "postgresql+psycopg://postgres@127.0.0.1:$PORT/$DB"
