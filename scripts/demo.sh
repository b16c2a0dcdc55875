#!/usr/bin/env bash
# Full local demo: a real Kafka broker, a generator streaming a healthy canary that
# regresses in us-east after 12 minutes of event time, and the pipeline with its live
# board and Prometheus /metrics. Ctrl-C stops the pipeline; `make kafka-stop` stops the broker.
set -euo pipefail
cd "$(dirname "$0")/.."
PORT="${METRICS_PORT:-9464}"
RATE="${RATE:-150}"
bootstrap="$(python3 kafka-broker/broker.py start)"
topic="telemetry-demo-$(date +%s)"
config="out/demo-rollout.toml"
mkdir -p out
echo "broker: $bootstrap   topic: $topic   metrics: http://127.0.0.1:$PORT/metrics" >&2
.venv/bin/canary-gate generate --scenario late_regression --seed 7 --minutes 25 \
    --out "kafka://$bootstrap/$topic" --rate "$RATE" --config-out "$config" 2>out/demo-generator.log &
generator=$!
trap 'kill "$generator" 2>/dev/null || true' EXIT
sleep 2  # the generator creates the topic
.venv/bin/canary-gate run --config "$config" --source "kafka://$bootstrap/$topic" \
    --verdicts "kafka://$bootstrap/canary.verdicts" --metrics-port "$PORT" --board on
