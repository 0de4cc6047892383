#!/usr/bin/env bash
# Runs the whole test suite on a fresh machine: installs ChronoX with its test
# dependencies into .venv, checks lint and import order (ruff) and types (mypy),
# starts PostgreSQL and Redis when they are not running, then runs pytest.
# Extra arguments go to pytest (after `-n 2`, two test processes: `-n 0` runs one).
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
    "$PYTHON" -m venv .venv
fi
.venv/bin/python -m pip install --quiet --disable-pip-version-check --upgrade pip >/dev/null
.venv/bin/python -m pip install --quiet --disable-pip-version-check -e '.[test]'

as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo -n "$@"; fi; }

ensure_debian_packages() {
    local missing=()
    command -v pg_ctlcluster >/dev/null || missing+=(postgresql)
    command -v redis-server >/dev/null || missing+=(redis-server)
    if [ ${#missing[@]} -gt 0 ]; then
        echo "installing ${missing[*]}"
        as_root apt-get update -qq && as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}"
    fi
}

ensure_postgres() {
    if pg_isready -h 127.0.0.1 -p 5432 -q 2>/dev/null; then return; fi
    ensure_debian_packages
    echo "starting PostgreSQL"
    local version
    version=$(ls /etc/postgresql | sort -V | tail -1)
    as_root pg_ctlcluster --skip-systemctl-redirect "$version" main start
    for _ in $(seq 1 30); do pg_isready -h 127.0.0.1 -p 5432 -q && return; sleep 1; done
    echo "PostgreSQL did not start" >&2; exit 1
}

ensure_redis() {
    if redis-cli -h 127.0.0.1 -p 6379 ping >/dev/null 2>&1; then return; fi
    ensure_debian_packages
    echo "starting Redis"
    mkdir -p /var/lib/redis /var/log/redis 2>/dev/null || true
    redis-server --daemonize yes --bind 127.0.0.1 -::1 --port 6379 --save "" --appendonly no \
        --dir /var/lib/redis --logfile /var/log/redis/ci.log
    for _ in $(seq 1 30); do redis-cli -h 127.0.0.1 -p 6379 ping >/dev/null 2>&1 && return; sleep 1; done
    echo "Redis did not start" >&2; exit 1
}

ensure_prometheus() {
    # promtool checks the alert rules; the server scrapes ChronoX in an end-to-end test.
    if command -v promtool >/dev/null && command -v prometheus >/dev/null; then return; fi
    echo "installing prometheus"
    as_root apt-get update -qq && as_root env DEBIAN_FRONTEND=noninteractive \
        apt-get install -y -qq --no-install-recommends prometheus
}

echo "ruff: lint and import order"
.venv/bin/ruff check --no-cache .
echo "mypy: types"
.venv/bin/mypy

ensure_postgres
ensure_redis
ensure_prometheus

exec .venv/bin/python -m pytest -n 2 "$@"
