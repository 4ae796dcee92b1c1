#!/usr/bin/env bash
# Makes sure Redis, RabbitMQ, PostgreSQL (and MariaDB for the MySQL tests) answer on loopback, and
# that HAProxy and oha are installed. Starts a stopped service with its usual command; installs a
# missing one from Debian's packages. Idempotent: a no-op when everything is up.
#
# Two Redis servers: the machine's shared one on 6379 (left as it is, never reconfigured), and the
# project's durable one on $SECKILL_LOCAL_REDIS_PORT (default 6390), run from deploy/redis.conf the
# way production must (append-only file, `appendfsync always`, `noeviction`); scripts/test.sh and
# scripts/flash-sale.sh point SECKILL_REDIS_URL at the latter. Also makes sure Redis Sentinel can
# run (tests start their own sentinels).
#
# Two PostgreSQL clusters likewise: the machine's shared one on 5432 (autovacuum off; the test suite
# uses it), and the project's on $SECKILL_LOCAL_PG_PORT (default 5433), from deploy/postgresql.conf
# with autovacuum, fsync and synchronous_commit on, as production runs it; scripts/flash-sale.sh and
# scripts/serve.sh point SECKILL_DATABASE_URL at the latter.
set -euo pipefail

log() { printf '[services] %s\n' "$*" >&2; }
have() { command -v "$1" >/dev/null 2>&1; }
apt_updated=0
apt_install() {
  if [ "$apt_updated" = 0 ]; then DEBIAN_FRONTEND=noninteractive apt-get update -qq >/dev/null; apt_updated=1; fi
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
}
wait_for() { # name, seconds, command...
  local name=$1 deadline=$((SECONDS + $2)); shift 2
  until "$@" >/dev/null 2>&1; do
    [ "$SECONDS" -lt "$deadline" ] || { log "$name did not come up"; return 1; }
    sleep 0.5
  done
}
# Every probe has a deadline: a server that accepts a connection and then never answers (a full
# disk under `appendfsync always`, a broker stuck in its boot) must fail the script, not hang it.
t() { timeout --kill-after=5 "${PROBE_TIMEOUT:-10}" "$@"; }

# A full disk stalls a Redis that fsyncs every write and PostgreSQL's commits: say so first.
free_mb=$(df -Pm "$(dirname "$0")" | awk 'NR == 2 { print $4 }')
if [ "${free_mb:-0}" -lt 4096 ]; then
  log "!!! only ${free_mb} MB free on the disk of $(dirname "$0"): the build and the durable Redis need more"
fi

# Redis
if ! t redis-cli -h 127.0.0.1 ping >/dev/null 2>&1; then
  have redis-server || { log "installing redis"; apt_install redis-server redis-tools; }
  log "starting redis"
  mkdir -p /var/lib/redis /var/log/redis
  redis-server --daemonize yes --bind 127.0.0.1 -::1 --port 6379 --save "" --appendonly no \
    --dir /var/lib/redis --logfile /var/log/redis/ci.log
  wait_for redis 20 t redis-cli -h 127.0.0.1 ping
fi

# The project's durable Redis, from deploy/redis.conf.
repo=$(cd "$(dirname "$0")/.." && pwd)
redis_port=${SECKILL_LOCAL_REDIS_PORT:-6390}
redis_dir=${SECKILL_LOCAL_REDIS_DIR:-/var/lib/seckill-redis-$redis_port}
redis_log=/var/log/seckill-redis-$redis_port.log
rcli() { t redis-cli -h 127.0.0.1 -p "$redis_port" "$@"; }
# PONG only: a server still replaying its AOF answers LOADING.
redis_pong() { [ "$(rcli ping 2>/dev/null)" = PONG ]; }
redis_conf() { rcli config get "$1" 2>/dev/null | sed -n 2p; }
have redis-server && have redis-cli || { log "installing redis"; apt_install redis-server redis-tools; }
if ! t bash -c "exec 3<>/dev/tcp/127.0.0.1/$redis_port" 2>/dev/null; then
  log "starting the project's redis on $redis_port (AOF, appendfsync always; data in $redis_dir)"
  mkdir -p "$redis_dir" "$(dirname "$redis_log")"
  redis-server "$repo/deploy/redis.conf" --port "$redis_port" --bind 127.0.0.1 --dir "$redis_dir" \
    --daemonize yes --logfile "$redis_log" --pidfile "/run/seckill-redis-$redis_port.pid"
fi
# Replaying a large AOF takes a while: wait for PONG, not for the port.
if ! wait_for "redis on $redis_port (see $redis_log)" 120 redis_pong; then
  log "!!! whatever listens on 127.0.0.1:$redis_port does not answer PING with PONG; not touching it."
  log "!!! Stop it, or choose another port with SECKILL_LOCAL_REDIS_PORT."
  exit 1
fi
aof=$(redis_conf appendonly) fsync=$(redis_conf appendfsync) policy=$(redis_conf maxmemory-policy)
if [ "$aof" != yes ] || [ "$fsync" != always ] || [ "$policy" != noeviction ]; then
  log "!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!"
  log "!!! a Redis on 127.0.0.1:$redis_port is not the project's durable Redis:"
  log "!!!   appendonly=${aof:-?} appendfsync=${fsync:-?} maxmemory-policy=${policy:-?}"
  log "!!!   (needs appendonly=yes appendfsync=always maxmemory-policy=noeviction, deploy/redis.conf)"
  log "!!! Stop it, or choose another port with SECKILL_LOCAL_REDIS_PORT. Not touching it."
  log "!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!"
  exit 1
fi

# Redis Sentinel: `redis-sentinel`, or the redis-server binary run with `--sentinel` (every Redis
# since 2.8; Debian's redis-server binary is the same executable). Install the package only when
# neither works.
redis_help=$(redis-server --help 2>&1 || true) # exits 1 after printing its usage
if ! have redis-sentinel && [[ $redis_help != *--sentinel* ]]; then
  log "installing redis-sentinel"
  apt_install redis-sentinel
fi

# libfaketime, for the clock-skew tests (bench/tests/faults_clock.rs): a gateway binary run with
# LD_PRELOAD=…/faketime/libfaketimeMT.so.1 and FAKETIME="+600" sees a wall clock 10 minutes ahead.
if ! ls /usr/lib/*/faketime/libfaketimeMT.so.1 >/dev/null 2>&1; then
  log "installing faketime (libfaketime)"
  apt_install faketime libfaketime
fi

# PostgreSQL
if ! t pg_isready -h 127.0.0.1 -p 5432 >/dev/null 2>&1; then
  have pg_ctlcluster || { log "installing postgresql"; apt_install postgresql; }
  log "starting postgresql"
  pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql | head -n1)" main start || true
  wait_for postgresql 30 t pg_isready -h 127.0.0.1 -p 5432
fi

# The project's PostgreSQL cluster, from deploy/postgresql.conf: autovacuum, fsync and
# synchronous_commit on, as production runs it (the shared cluster on 5432 runs with autovacuum
# off, for the test suite's speed). Its own data directory; initdb and the server run as the
# postgres user (both refuse root).
pg_port=${SECKILL_LOCAL_PG_PORT:-5433}
pg_dir=${SECKILL_LOCAL_PG_DIR:-/var/lib/seckill-postgres-$pg_port}
pg_log=/var/log/seckill-postgres-$pg_port.log
pg_bin=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n1)
as_pg() { (cd / && setpriv --reuid=postgres --regid=postgres --init-groups "$@"); }
pg_setting() { t psql -h 127.0.0.1 -p "$pg_port" -U postgres -d postgres -Atc "SHOW $1" 2>/dev/null; }
if ! t pg_isready -q -h 127.0.0.1 -p "$pg_port" -U postgres 2>/dev/null && ! t bash -c "exec 3<>/dev/tcp/127.0.0.1/$pg_port" 2>/dev/null; then
  [ -x "$pg_bin/initdb" ] || { log "no PostgreSQL server binaries under /usr/lib/postgresql"; exit 1; }
  mkdir -p "$pg_dir"
  chown postgres:postgres "$pg_dir"
  chmod 700 "$pg_dir"
  if [ ! -s "$pg_dir/PG_VERSION" ]; then
    log "initdb of the project's postgresql in $pg_dir"
    as_pg "$pg_bin/initdb" -D "$pg_dir" -U postgres -A trust -E UTF8 --locale=C --no-instructions >/dev/null
    echo "include_if_exists = 'seckill.conf'" >>"$pg_dir/postgresql.conf"
  fi
  install -o postgres -g postgres -m 600 "$repo/deploy/postgresql.conf" "$pg_dir/seckill.conf"
  touch "$pg_log" && chown postgres:postgres "$pg_log"
  log "starting the project's postgresql on $pg_port (autovacuum, fsync and synchronous_commit on; data in $pg_dir)"
  as_pg "$pg_bin/pg_ctl" -D "$pg_dir" -l "$pg_log" -w -t 60 \
    -o "-p $pg_port -c listen_addresses=127.0.0.1 -c unix_socket_directories=''" start >/dev/null || true
fi
if ! wait_for "postgresql on $pg_port (see $pg_log)" 60 t pg_isready -q -h 127.0.0.1 -p "$pg_port" -U postgres; then
  log "!!! whatever listens on 127.0.0.1:$pg_port is not an answering PostgreSQL; not touching it."
  log "!!! Stop it, or choose another port with SECKILL_LOCAL_PG_PORT."
  exit 1
fi
# A running project cluster whose deploy/postgresql.conf changed since it started takes the new
# settings (every one of them is reloadable).
if [ "$(pg_setting data_directory)" = "$pg_dir" ] && ! cmp -s "$repo/deploy/postgresql.conf" "$pg_dir/seckill.conf"; then
  log "reloading the project's postgresql on $pg_port with the changed deploy/postgresql.conf"
  install -o postgres -g postgres -m 600 "$repo/deploy/postgresql.conf" "$pg_dir/seckill.conf"
  t psql -h 127.0.0.1 -p "$pg_port" -U postgres -d postgres -Atc "SELECT pg_reload_conf()" >/dev/null
fi
pg_av=$(pg_setting autovacuum) pg_fsync=$(pg_setting fsync) pg_sync=$(pg_setting synchronous_commit) pg_fpw=$(pg_setting full_page_writes)
if [ "$pg_av" != on ] || [ "$pg_fsync" != on ] || [ "$pg_sync" != on ] || [ "$pg_fpw" != on ]; then
  log "!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!"
  log "!!! a PostgreSQL on 127.0.0.1:$pg_port is not the project's:"
  log "!!!   autovacuum=${pg_av:-?} fsync=${pg_fsync:-?} synchronous_commit=${pg_sync:-?} full_page_writes=${pg_fpw:-?}"
  log "!!!   (needs every one on, deploy/postgresql.conf)"
  log "!!! Stop it, or choose another port with SECKILL_LOCAL_PG_PORT. Not touching it."
  log "!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!"
  exit 1
fi

# MariaDB (the MySQL-backend tests)
if ! t mysqladmin -uroot -h127.0.0.1 ping >/dev/null 2>&1; then
  have mariadbd || { log "installing mariadb"; apt_install mariadb-server; }
  log "starting mariadb"
  start-stop-daemon --start --oknodo --background --exec /usr/sbin/mariadbd || true
  wait_for mariadb 30 t mysqladmin -uroot -h127.0.0.1 ping
fi

# RabbitMQ
if ! PROBE_TIMEOUT=60 t rabbitmqctl -q status >/dev/null 2>&1 || ! t bash -c 'exec 3<>/dev/tcp/127.0.0.1/5672' 2>/dev/null; then
  have rabbitmq-server || { log "installing rabbitmq"; apt_install rabbitmq-server; }
  log "starting rabbitmq"
  PROBE_TIMEOUT=60 t rabbitmq-server -detached || true
  PROBE_TIMEOUT=60 wait_for rabbitmq 120 t rabbitmqctl -q await_startup
  wait_for "rabbitmq port" 30 t bash -c 'exec 3<>/dev/tcp/127.0.0.1/5672'
fi

# HAProxy, the load balancer in front of several gateways (deploy/haproxy.cfg). Only the binary:
# `seckill-bench flash-sale --gateways N` and bench/tests/haproxy.rs run HAProxies of their own.
if ! have haproxy; then
  log "installing haproxy"
  apt_install haproxy
fi

# oha, the load generator
if ! have oha; then
  log "installing oha (cargo install, a few minutes once; cargo lists each crate)"
  cargo install oha --locked
fi
log "redis (shared 6379, project $redis_port), postgresql (shared 5432, project $pg_port), mariadb, rabbitmq, haproxy and oha are ready"
