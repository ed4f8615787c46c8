#!/bin/sh
# Compose one-shot `history` (exporter image), before the exporter and Prometheus start:
# fill the ledger from the providers once, then write its history as OpenMetrics day files
# for the one-shot `prometheus-backfill`. Idempotent: once written, a later `docker compose
# up` finds the marker and does nothing (`docker compose down -v` starts over).
set -eu
out="${HISTORY_DIR:-/var/lib/llm-cost-history}"  # a volume readable by Prometheus's user
if [ -e "$out/.written" ]; then
  echo "history: already written to $out, nothing to do"
  exit 0
fi
# The recording rules too, split into levels for the `prometheus-backfill` one-shot.
rules="${RULES_FILE:-/etc/prometheus/rules/llm-cost.rules.yml}"
set --
if [ -e "$rules" ]; then
  set -- --rules="$rules" --rules-days="${RULES_DAYS:-8}"
fi
# shellcheck disable=SC2086  # LLM_EXPORTER_CMD may be a command with arguments
${LLM_EXPORTER_CMD:-llm-cost-exporter} backfill --poll \
  --config.file="${CONFIG:-/etc/llm-cost-exporter/config.yml}" \
  --output="$out/history/" --instance="${BACKFILL_INSTANCE:-exporter:9877}" "$@"
touch "$out/.written"
