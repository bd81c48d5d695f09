#!/usr/bin/env bash
# Resolve an incident. Usage: resolve_incident.sh INCIDENT_ID RESOLVED_BY [ROOT_CAUSE]   (ADDRESS=localhost:9000)
set -euo pipefail
INCIDENT_ID=${1:?usage: resolve_incident.sh INCIDENT_ID RESOLVED_BY [ROOT_CAUSE]}
RESOLVED_BY=${2:?usage: resolve_incident.sh INCIDENT_ID RESOLVED_BY [ROOT_CAUSE]}
grpcurl -plaintext -d @ "${ADDRESS:-localhost:9000}" \
  incident_manager.v1.IncidentService/ResolveIncident <<EOF
{"id": "$INCIDENT_ID", "method": "RESOLUTION_METHOD_MANUAL",
 "resolved_by": "$RESOLVED_BY", "root_cause": "${3:-}"}
EOF
