#!/bin/sh
# Compose one-shot `prometheus-backfill` (Prometheus image, which ships promtool), after
# `history` and before Prometheus starts: turn the exporter's history files into TSDB
# blocks in Prometheus's data directory. Idempotent: once done, a later `docker compose up`
# finds the marker and adds nothing (no duplicate samples).
set -eu
data="${PROMETHEUS_DATA:-/prometheus}"
history="${BACKFILL_DIR:-/history}/history"
if [ -e "$data/.llm-cost-backfilled" ]; then
  echo "prometheus-backfill: already done, nothing to do"
  exit 0
fi
n=0
for f in "$history"/history-*.om; do
  [ -e "$f" ] || continue
  promtool tsdb create-blocks-from openmetrics -q "$f" "$data"
  n=$((n + 1))
done
touch "$data/.llm-cost-backfilled"
echo "prometheus-backfill: $n days of history added"
