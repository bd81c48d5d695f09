#!/usr/bin/env bash
# List open incidents, most severe first. Usage: list_incidents.sh [PAGE_SIZE]   (ADDRESS=localhost:9000)
set -euo pipefail
grpcurl -plaintext -d @ "${ADDRESS:-localhost:9000}" \
  incident_manager.v1.IncidentService/ListIncidents <<EOF
{"open": true, "order_by": "severity", "page_size": ${1:-20}}
EOF
