#!/usr/bin/env bash
# The whole test suite, from a fresh Debian machine with Python 3.11:
# installs what it needs (apt + pip into .venv), runs ruff and mypy --strict,
# then pytest on SQLite and again on a throw-away PostgreSQL cluster.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD

APT_PACKAGES=(python3-venv openssl softhsm2 postgresql chromium fonts-noto-cjk golang-cfssl wrk nginx)
missing=()
for pkg in "${APT_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
if ((${#missing[@]})); then
  echo "== installing Debian packages: ${missing[*]}"
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${missing[@]}" >/dev/null
fi

if [ ! -x .venv/bin/python ]; then
  echo "== creating .venv"
  python3 -m venv .venv
fi
echo "== installing govpki and its dev dependencies into .venv"
.venv/bin/python -m pip install -q --upgrade pip >/dev/null
.venv/bin/python -m pip install -q -e '.[dev]'

echo "== ruff"
.venv/bin/ruff check .
.venv/bin/ruff format --check .
echo "== mypy --strict"
.venv/bin/mypy

echo "== pytest on SQLite"
.venv/bin/python -m pytest "$@"

echo "== starting a throw-away PostgreSQL cluster on 127.0.0.1"
PG_BIN=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -n 1)
PG_DIR=$(mktemp -d /tmp/govpki-pg.XXXXXX)
PG_PORT=$(.venv/bin/python -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
PG_USER=$(id -un)
RUN=()
if [ "$(id -u)" -eq 0 ]; then  # postgres refuses to run as root
  PG_USER=postgres
  chown postgres "$PG_DIR"
  RUN=(runuser -u postgres --)
fi
cleanup() {
  "${RUN[@]}" "$PG_BIN/pg_ctl" -D "$PG_DIR/data" -m immediate stop >/dev/null 2>&1 || true
  rm -rf "$PG_DIR"
}
trap cleanup EXIT
"${RUN[@]}" "$PG_BIN/initdb" -D "$PG_DIR/data" -U "$PG_USER" --auth=trust -E UTF8 --locale=C.UTF-8 >/dev/null
"${RUN[@]}" "$PG_BIN/pg_ctl" -D "$PG_DIR/data" -l "$PG_DIR/log" -w \
  -o "-h 127.0.0.1 -p $PG_PORT -k $PG_DIR -c fsync=off -c full_page_writes=off -c max_connections=200" start >/dev/null

echo "== pytest on PostgreSQL (port $PG_PORT)"
GOVPKI_TEST_DATABASE_URL="postgresql+psycopg://$PG_USER@127.0.0.1:$PG_PORT/postgres" \
  .venv/bin/python -m pytest -m "not browser" "$@"
