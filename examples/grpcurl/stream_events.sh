#!/usr/bin/env bash
# Print incident events: every stored one after AFTER_SEQUENCE, then live ones,
# for at most SECONDS. Usage: stream_events.sh [AFTER_SEQUENCE] [SECONDS]   (ADDRESS=localhost:9000)
set -uo pipefail
grpcurl -plaintext -max-time "${2:-10}" -d @ "${ADDRESS:-localhost:9000}" \
  incident_manager.v1.IncidentService/StreamIncidents <<EOF
{"after_sequence": ${1:-0}}
EOF
status=$?
# grpcurl ends a stream stopped by -max-time with DeadlineExceeded: exit 64 + 4,
# which is the expected way for this script to end.
if [ "$status" -eq 0 ] || [ "$status" -eq 68 ]; then exit 0; fi
exit "$status"
