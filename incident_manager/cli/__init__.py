"""`imctl`: the command line for the people on call.

It speaks only the server's public gRPC API, through the generated stubs in
`generated/`, exactly as any other client would: nothing here imports the
server's domain, service, adapters or entrypoints (tests/unit/test_architecture.py
checks), so what imctl can do, a script with grpcurl can do too.
"""

import os

# grpc's C core logs on stderr by itself (connection failures, handshake
# errors); a person should see our one-line message instead. It reads the
# variable when grpc is imported, so this comes before any module imports grpc.
os.environ.setdefault("GRPC_VERBOSITY", "NONE")
