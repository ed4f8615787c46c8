#!/bin/sh
# Compose one-shot `prometheus-backfill` (Prometheus image, which ships promtool), after
# `history` and before Prometheus starts: turn the exporter's history files into TSDB
# blocks in Prometheus's data directory, then give the recording rules the same past
# (`promtool tsdb create-blocks-from rules`, level by level: a rule that reads another rule
# is backfilled once that one is in the data; see exporter/rule_levels.py). Idempotent:
# once done, a later `docker compose up` finds the marker and adds nothing (no duplicates).
# The rules' past is a bonus: if it fails, the history stays in, Prometheus still starts
# (the live rules take over from the first evaluation), and the reason is printed.
set -eu
data="${PROMETHEUS_DATA:-/prometheus}"
history="${BACKFILL_DIR:-/history}/history"
if [ -e "$data/.llm-cost-backfilled" ]; then
  echo "prometheus-backfill: already done, nothing to do"
  exit 0
fi
n=0
if [ ! -e "$data/.llm-cost-history-imported" ]; then
  for f in "$history"/history-*.om; do
    [ -e "$f" ] || continue
    promtool tsdb create-blocks-from openmetrics -q "$f" "$data"
    n=$((n + 1))
  done
  # Its own marker: a rerun after a failure below never imports the history twice.
  touch "$data/.llm-cost-history-imported"
fi
echo "prometheus-backfill: $n days of history added"

pid=""
work="${TMPDIR:-/tmp}/llm-cost-rules.$$"
stop_prometheus() {
  if [ -n "$pid" ]; then
    kill "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
    pid=""
  fi
}
trap 'stop_prometheus; rm -rf "$work"' EXIT

# Backfills the rules of level $1; returns non-zero (after saying why) when it cannot.
backfill_level() {
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
      echo "prometheus-backfill: a Prometheus on $data did not start:" >&2
      tail -n 20 "$work/prometheus.log" >&2
      return 1
    fi
    sleep 1
  done
  rm -rf "$work/blocks"
  # One path for every level: with the group's name, it sets the evaluation times, which
  # must be the same at every level (a rule reads the rules below at its own instant).
  cp "$history/rules-level-$1.yml" "$work/rules.yml"
  # Every 5m (RULES_EVAL_INTERVAL): within Prometheus's 5m lookback, so a query at any
  # past moment (an `offset 1w` baseline, a range panel's step) finds a recorded sample.
  if ! promtool tsdb create-blocks-from rules -q --url="http://127.0.0.1:$port" \
    --start="$RULES_START" --end="$RULES_END" --eval-interval="${RULES_EVAL_INTERVAL:-5m}" \
    --output-dir="$work/blocks" "$work/rules.yml"; then
    echo "prometheus-backfill: promtool failed on rules-level-$1.yml" >&2
    return 1
  fi
  stop_prometheus
  for b in "$work/blocks"/*; do
    if [ -d "$b" ]; then
      mv "$b" "$data/"
    fi
  done
}

levels=0
if [ -e "$history/rules-range.env" ]; then
  # RULES_START, RULES_END: the rules' window (written by the backfill).
  . "$history/rules-range.env"
  port="${BACKFILL_PROMETHEUS_PORT:-9099}"
  mkdir -p "$work"
  echo "global: {}" > "$work/prometheus.yml"
  k=1
  while [ -e "$history/rules-level-$k.yml" ]; do
    if ! backfill_level "$k"; then
      stop_prometheus
      echo "prometheus-backfill: recording rules from level $k on have no past; the live" \
        "rules start at the first evaluation" >&2
      break
    fi
    levels=$k
    k=$((k + 1))
  done
fi
touch "$data/.llm-cost-backfilled"
echo "prometheus-backfill: recording rules backfilled in $levels levels"
