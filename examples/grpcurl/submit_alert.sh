#!/usr/bin/env bash
# Submit one alert. Usage: submit_alert.sh ALERT_ID [TITLE]   (ADDRESS=localhost:9000)
set -euo pipefail
ALERT_ID=${1:?usage: submit_alert.sh ALERT_ID [TITLE]}
TITLE=${2:-p99 latency above 2s on gpt-4o}
grpcurl -plaintext -d @ "${ADDRESS:-localhost:9000}" \
  incident_manager.v1.AlertIngestionService/SubmitAlert <<EOF
{"alert": {"id": "$ALERT_ID", "source": "llm-sentinel", "title": "$TITLE",
  "severity": "SEVERITY_P1", "type": "INCIDENT_TYPE_PERFORMANCE",
  "affected_resources": ["model/gpt-4o"]}}
EOF
