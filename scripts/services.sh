#!/usr/bin/env bash
# Sourced by scripts/test and scripts/run: make sure the local PostgreSQL and RabbitMQ
# run (start them when they do not), so both commands work on a fresh machine.

log() { printf '[order-timeout] %s\n' "$*" >&2; }

# Polls `$@` every half second until it succeeds, for at most $1 seconds.
wait_for() {
    local seconds=$1
    shift
    local deadline=$((SECONDS + seconds))
    until "$@" >/dev/null 2>&1; do
        if ((SECONDS >= deadline)); then
            log "gave up after ${seconds}s waiting for: $*"
            return 1
        fi
        sleep 0.5
    done
}

ensure_postgres() {
    if pg_isready -h 127.0.0.1 -q; then
        return
    fi
    log "starting PostgreSQL"
    local version
    for version in $(ls /etc/postgresql); do
        pg_ctlcluster --skip-systemctl-redirect "$version" main start || true
    done
    wait_for 60 pg_isready -h 127.0.0.1 -q
    log "PostgreSQL is up"
}

ensure_rabbitmq() {
    if rabbitmqctl -q await_startup --timeout 5 >/dev/null 2>&1; then
        return
    fi
    log "starting RabbitMQ"
    rabbitmq-server -detached || log "rabbitmq-server -detached failed; waiting for the node anyway"
    wait_for 120 rabbitmqctl -q await_startup --timeout 5
    log "RabbitMQ is up"
}

ensure_services() {
    ensure_postgres
    ensure_rabbitmq
}

# Kills what is left of the cluster test's nodes (tests/cluster/harness.rs) and removes
# their directory; nothing when they are gone already. The harness does this itself on
# drop; this is for a test process killed before it could.
remove_test_cluster() {
    local pid_file
    for pid_file in /tmp/ot-cluster/*/node.pid; do
        [[ -f $pid_file ]] || continue
        local pid
        pid=$(cat "$pid_file")
        # Only a VM of one of these nodes (a stale pid file may name another process).
        if tr '\0' '\n' <"/proc/$pid/environ" 2>/dev/null | grep -q '^RABBITMQ_NODENAME=ot-c'; then
            kill -9 "$pid" 2>/dev/null || true
        fi
    done
    rm -rf /tmp/ot-cluster
}
