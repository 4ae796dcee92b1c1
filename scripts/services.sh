#!/usr/bin/env bash
# Makes sure Redis, RabbitMQ, PostgreSQL (and MariaDB for the MySQL tests) answer on loopback, and
# that oha is installed. Starts a stopped service with its usual command; installs a missing one
# from Debian's packages. Idempotent: a no-op when everything is up.
set -euo pipefail

log() { printf '[services] %s\n' "$*" >&2; }
have() { command -v "$1" >/dev/null 2>&1; }
apt_updated=0
apt_install() {
  if [ "$apt_updated" = 0 ]; then DEBIAN_FRONTEND=noninteractive apt-get update -qq >/dev/null; apt_updated=1; fi
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
}
wait_for() { # name, tries, command...
  local name=$1 tries=$2; shift 2
  for _ in $(seq "$tries"); do "$@" >/dev/null 2>&1 && return 0; sleep 0.5; done
  log "$name did not come up"; return 1
}

# Redis
if ! redis-cli -h 127.0.0.1 ping >/dev/null 2>&1; then
  have redis-server || { log "installing redis"; apt_install redis-server redis-tools; }
  log "starting redis"
  mkdir -p /var/lib/redis /var/log/redis
  redis-server --daemonize yes --bind 127.0.0.1 -::1 --port 6379 --save "" --appendonly no \
    --dir /var/lib/redis --logfile /var/log/redis/ci.log
  wait_for redis 40 redis-cli -h 127.0.0.1 ping
fi

# PostgreSQL
if ! pg_isready -h 127.0.0.1 -p 5432 >/dev/null 2>&1; then
  have pg_ctlcluster || { log "installing postgresql"; apt_install postgresql; }
  log "starting postgresql"
  pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql | head -n1)" main start || true
  wait_for postgresql 60 pg_isready -h 127.0.0.1 -p 5432
fi

# MariaDB (the MySQL-backend tests)
if ! mysqladmin -uroot -h127.0.0.1 ping >/dev/null 2>&1; then
  have mariadbd || { log "installing mariadb"; apt_install mariadb-server; }
  log "starting mariadb"
  start-stop-daemon --start --oknodo --background --exec /usr/sbin/mariadbd || true
  wait_for mariadb 60 mysqladmin -uroot -h127.0.0.1 ping
fi

# RabbitMQ
if ! rabbitmqctl -q status >/dev/null 2>&1 || ! (exec 3<>/dev/tcp/127.0.0.1/5672) 2>/dev/null; then
  have rabbitmq-server || { log "installing rabbitmq"; apt_install rabbitmq-server; }
  log "starting rabbitmq"
  rabbitmq-server -detached || true
  wait_for rabbitmq 120 rabbitmqctl -q await_startup
  wait_for "rabbitmq port" 60 bash -c 'exec 3<>/dev/tcp/127.0.0.1/5672'
fi

# oha, the load generator
if ! have oha; then
  log "installing oha (cargo install, a few minutes once)"
  cargo install oha --locked --quiet
fi
log "redis, postgresql, mariadb, rabbitmq and oha are ready"
