#!/usr/bin/env bash
# Quick start: install what a fresh Debian 12 lacks, build, start the local RabbitMQ and
# PostgreSQL, migrate, and run the example service end to end:
#   svccomm publish user update.base  ->  runpublisher  ->  RabbitMQ  ->  runconsumer
#   (apps/users handles it and publishes billing customer.updated in its transaction)
#   ->  runpublisher  ->  RabbitMQ  ->  runconsumer (apps/billing handles it).
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"

if [ "${SVCCOMM_SKIP_INSTALL:-0}" != 1 ]; then
  scripts/install-deps.sh
fi
cmake -S . -B build -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null
cmake --build build -j2
scripts/servers.sh start
eval "$(scripts/servers.sh env)"

bin=build/svccomm
$bin migrate
$bin check

logs=.local/quickstart
mkdir -p "$logs"
# The consumer first: it declares the queue and its bindings. An event published before any
# queue is bound is unroutable, and the relay drops it (PUBLISHER_UNROUTABLE = "drop").
$bin runconsumer >"$logs/consumer.log" 2>&1 &
con=$!
pub=
trap 'kill -TERM $con $pub 2>/dev/null || true; wait $con $pub 2>/dev/null || true' EXIT
for _ in $(seq 1 100); do
  grep -q "consuming 'example_service'" "$logs/consumer.log" && break
  sleep 0.2
done
$bin runpublisher >"$logs/publisher.log" 2>&1 &
pub=$!

id=$($bin publish user update.base '{"id": 1, "name": "Ada Lovelace"}')
echo "published user update.base as event $id"
for _ in $(seq 1 100); do
  if grep -q "billing: customer 1" "$logs/consumer.log"; then
    grep -E "^(users|billing):" "$logs/consumer.log"
    echo "end to end: OK (logs in $logs/)"
    exit 0
  fi
  sleep 0.2
done
echo "end to end: the billing handler did not run within 20 s; logs:" >&2
cat "$logs/publisher.log" "$logs/consumer.log" >&2
exit 1
