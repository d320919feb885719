#!/usr/bin/env bash
# Installs what pgshard's tests, `make run` and the benchmarks need from
# Debian's packages, when it is missing. Idempotent; does nothing when
# everything is present.
#
#   scripts/install-deps.sh         PostgreSQL 15 server + client (psql, pgbench), docker-compose
#   scripts/install-deps.sh bench   ... plus pgbouncer, pgpool-II and strace
#
# Runs apt-get as root (no sudo). When not root and something is missing,
# it prints what to install and fails.
set -euo pipefail

PGBIN="${PGSHARD_PGBIN:-/usr/lib/postgresql/15/bin}"
want_bench=0
for arg in "$@"; do
	case "$arg" in
	bench) want_bench=1 ;;
	*)
		echo "usage: $0 [bench]" >&2
		exit 2
		;;
	esac
done

missing=()
packages=()
for f in postgres initdb pg_basebackup pg_ctl pgbench; do
	[[ -x "$PGBIN/$f" ]] || missing+=("$PGBIN/$f")
done
if ((${#missing[@]})); then
	packages+=(postgresql-15)
fi
if ! [[ -x "$PGBIN/psql" ]] && ! command -v psql >/dev/null 2>&1; then
	missing+=(psql)
	packages+=(postgresql-client-15)
elif ((${#packages[@]})); then
	packages+=(postgresql-client-15)
fi
# docker-compose validates docker-compose.yml in a test (no Docker engine needed).
if ! command -v docker-compose >/dev/null 2>&1; then
	missing+=(docker-compose)
	packages+=(docker-compose)
fi
if ((want_bench)); then
	if ! command -v pgbouncer >/dev/null 2>&1 && ! [[ -x /usr/sbin/pgbouncer ]]; then
		missing+=(pgbouncer)
		packages+=(pgbouncer)
	fi
	if ! command -v pgpool >/dev/null 2>&1 && ! [[ -x /usr/sbin/pgpool ]]; then
		missing+=(pgpool)
		packages+=(pgpool2)
	fi
	# The bench's system calls per query (-relay-parts syscalls).
	if ! command -v strace >/dev/null 2>&1 && ! [[ -x /usr/bin/strace ]]; then
		missing+=(strace)
		packages+=(strace)
	fi
fi

if ((${#packages[@]} == 0)); then
	exit 0
fi

echo "install-deps: missing: ${missing[*]}" >&2
if [[ "$(id -u)" != 0 ]]; then
	echo "install-deps: not root; install these Debian packages and retry: ${packages[*]}" >&2
	echo "install-deps: (or point PGSHARD_PGBIN at a PostgreSQL 15 bin directory)" >&2
	exit 1
fi

export DEBIAN_FRONTEND=noninteractive
echo "install-deps: apt-get install ${packages[*]}" >&2
apt-get update -q
apt-get install -y -q --no-install-recommends "${packages[@]}"

# Debian may create and start a "main" cluster on 5432 and start the
# pgbouncer/pgpool2 services (pgbouncer's default port is 6432, pgshard's
# too). pgshard starts its own servers; stop theirs so they do not hold ports.
if command -v pg_lsclusters >/dev/null 2>&1; then
	pg_lsclusters --no-header 2>/dev/null | while read -r ver name port status _; do
		if [[ "$status" == online* ]]; then
			echo "install-deps: stopping Debian cluster $ver/$name on port $port" >&2
			pg_ctlcluster "$ver" "$name" stop || true
		fi
		if [[ -f "/etc/postgresql/$ver/$name/start.conf" ]]; then
			echo manual >"/etc/postgresql/$ver/$name/start.conf" || true
		fi
	done
fi
for svc in pgbouncer pgpool2; do
	if [[ -x "/etc/init.d/$svc" ]] && pgrep -x "${svc%2}" >/dev/null 2>&1; then
		echo "install-deps: stopping the $svc service" >&2
		"/etc/init.d/$svc" stop >/dev/null 2>&1 || true
	fi
done

for f in postgres initdb pg_basebackup pgbench; do
	if ! [[ -x "$PGBIN/$f" ]]; then
		echo "install-deps: $PGBIN/$f still missing after install" >&2
		exit 1
	fi
done
echo "install-deps: done" >&2
