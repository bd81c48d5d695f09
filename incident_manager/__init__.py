"""The incident manager for LLM operations: alerts in, deduplicated incidents out, over gRPC."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("incident-manager")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0+unknown"
