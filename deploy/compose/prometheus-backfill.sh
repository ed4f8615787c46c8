#!/bin/sh
# Compose one-shot `prometheus-backfill` (Prometheus image, which ships promtool), after
# `history` and before Prometheus starts: turn the exporter's history files into TSDB
# blocks in Prometheus's data directory, then give the recording rules the same past
# (`promtool tsdb create-blocks-from rules`, level by level: a rule that reads another rule
# is backfilled once that one is in the data; see exporter/rule_levels.py). Idempotent:
# once done, a later `docker compose up` finds the marker and adds nothing (no duplicates).
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
echo "prometheus-backfill: $n days of history added"

levels=0
if [ "$n" -gt 0 ] && [ -e "$history/rules-range.env" ]; then
  # RULES_START, RULES_END: the first history sample and the last (written by the backfill).
  . "$history/rules-range.env"
  port="${BACKFILL_PROMETHEUS_PORT:-9099}"
  work="${TMPDIR:-/tmp}/llm-cost-rules.$$"
  mkdir -p "$work"
  echo "global: {}" > "$work/prometheus.yml"
  k=1
  while [ -e "$history/rules-level-$k.yml" ]; do
    # Every 5m (RULES_EVAL_INTERVAL): within Prometheus's 5m lookback, so a query at any
    # past moment (an `offset 1w` baseline, a range panel's step) finds a recorded sample.
    # A Prometheus of its own on the data so far (no scrapes, no rules), for promtool to
    # query; the retention must be the real one's, or it would delete the older blocks.
    prometheus --config.file="$work/prometheus.yml" --storage.tsdb.path="$data" \
      --storage.tsdb.retention.time="${PROMETHEUS_RETENTION:-400d}" \
      --web.listen-address="127.0.0.1:$port" > "$work/prometheus.log" 2>&1 &
    pid=$!
    tries=0
    until wget -q -O /dev/null "http://127.0.0.1:$port/-/ready" 2>/dev/null; do
      tries=$((tries + 1))
      if [ "$tries" -gt 120 ] || ! kill -0 "$pid" 2>/dev/null; then
        echo "prometheus-backfill: Prometheus on $data did not start:" >&2
        tail -n 20 "$work/prometheus.log" >&2
        kill "$pid" 2>/dev/null || true
        exit 1
      fi
      sleep 1
    done
    rm -rf "$work/blocks"
    # One path for every level: with the group's name, it sets the evaluation times, which
    # must be the same at every level (a rule reads the rules below at its own instant).
    cp "$history/rules-level-$k.yml" "$work/rules.yml"
    status=0
    promtool tsdb create-blocks-from rules -q --url="http://127.0.0.1:$port" \
      --start="$RULES_START" --end="$RULES_END" --eval-interval="${RULES_EVAL_INTERVAL:-5m}" \
      --output-dir="$work/blocks" "$work/rules.yml" || status=$?
    kill "$pid"
    wait "$pid" || true
    if [ "$status" -ne 0 ]; then
      echo "prometheus-backfill: promtool failed on rules-level-$k.yml (exit $status)" >&2
      exit 1
    fi
    for b in "$work/blocks"/*; do
      [ -d "$b" ] && mv "$b" "$data/"
    done
    levels=$k
    k=$((k + 1))
  done
  rm -rf "$work"
fi
touch "$data/.llm-cost-backfilled"
echo "prometheus-backfill: recording rules backfilled in $levels levels"
