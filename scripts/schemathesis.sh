#!/usr/bin/env bash
# Runs schemathesis (PyPI, pinned) over openapi.yaml against the service's binary with a
# fresh database and queue prefix, for a bounded time (MAX_TIME seconds, default 150).
# Checks: no 500, every status and content type documented, every body matching its
# schema, and invalid input refused. scripts/test runs it after the other tests; alone it needs
# the services up and the binary built (`cargo build --bins`). schemathesis is installed once
# per machine into a virtualenv in the user's cache (not in the clone, so a fresh clone on
# the same machine does not install it again).
set -euo pipefail
cd "$(dirname "$0")/.."

SCHEMATHESIS_VERSION=4.32.5
MAX_TIME=${MAX_TIME:-150}
venv=${XDG_CACHE_HOME:-$HOME/.cache}/order-timeout/schemathesis-$SCHEMATHESIS_VERSION
if [[ ! -x $venv/bin/schemathesis ]] || ! $venv/bin/schemathesis --version | grep -q "$SCHEMATHESIS_VERSION"; then
    echo "installing schemathesis $SCHEMATHESIS_VERSION into $venv"
    mkdir -p "$(dirname "$venv")"
    python3 -m venv "$venv"
    "$venv/bin/pip" install -q "schemathesis==$SCHEMATHESIS_VERSION"
fi

suffix=$(python3 -c 'import secrets; print(secrets.token_hex(6))')
database=ot_schemathesis_$suffix
prefix=ot_schemathesis_$suffix
token=$(python3 -c 'import secrets; print(secrets.token_urlsafe(24))')
port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
log_file=target/schemathesis-service.log

service_pid=
cleanup() {
    if [[ -n $service_pid ]]; then
        kill "$service_pid" 2>/dev/null || true
        wait "$service_pid" 2>/dev/null || true
    fi
    psql -q -h 127.0.0.1 -U postgres -d postgres -c "drop database if exists \"$database\" with (force)" >/dev/null 2>&1 || true
    for queue in $(rabbitmqctl list_queues name --quiet --no-table-headers 2>/dev/null | grep "^$prefix\." || true); do
        rabbitmqctl delete_queue "$queue" >/dev/null 2>&1 || true
    done
}
trap cleanup EXIT

DATABASE_URL="postgres://postgres@127.0.0.1:5432/$database" \
    QUEUE_PREFIX="$prefix" HTTP_ADDR="127.0.0.1:$port" ADMIN_TOKEN="$token" \
    RUST_LOG=warn target/debug/order-timeout serve >"$log_file" 2>&1 &
service_pid=$!

for _ in $(seq 1 150); do
    if curl -fsS "http://127.0.0.1:$port/readyz" >/dev/null 2>&1; then break; fi
    sleep 0.2
done
curl -fsS "http://127.0.0.1:$port/readyz" >/dev/null

# schemathesis writes its .schemathesis/ folder here (git-ignored).
"$venv/bin/schemathesis" run openapi.yaml \
    --url "http://127.0.0.1:$port" \
    --header "Authorization: Bearer $token" \
    --checks not_a_server_error,status_code_conformance,content_type_conformance,response_schema_conformance,negative_data_rejection \
    --max-examples 30 \
    --max-time "$MAX_TIME" \
    --workers 1 \
    --seed 1 \
    --request-timeout 10 \
    --suppress-health-check all
