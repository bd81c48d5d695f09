#!/usr/bin/env bash
# List open incidents, most severe first. Usage: list_incidents.sh [PAGE_SIZE]   (ADDRESS=localhost:9000)
set -euo pipefail
grpcurl -plaintext -d @ "${ADDRESS:-localhost:9000}" \
  incident_manager.v1.IncidentService/ListIncidents <<EOF
{"states": ["INCIDENT_STATE_DETECTED", "INCIDENT_STATE_TRIAGED",
            "INCIDENT_STATE_INVESTIGATING", "INCIDENT_STATE_REMEDIATING"],
 "order_by": "severity", "page_size": ${1:-20}}
EOF
