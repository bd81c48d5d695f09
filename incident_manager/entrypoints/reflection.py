"""Server reflection that serves our proto files with their comments.

The generated `_pb2` modules hold descriptors without source info, so stock
reflection would show grpcurl and other clients our messages but none of the
documentation. `make generate` writes a descriptor set compiled with
`--include_source_info`; for our own files reflection answers from it.
"""

from __future__ import annotations

from collections.abc import Iterable
from importlib import resources
from typing import Any

from google.protobuf import descriptor_pb2
from grpc_reflection.v1alpha import reflection_pb2
from grpc_reflection.v1alpha._async import ReflectionServicer


def documented_files() -> dict[str, bytes]:
    """Our proto files, by name, serialized with their comments."""
    raw = (
        resources.files("generated.incident_manager.v1")
        .joinpath("descriptor_set.binpb")
        .read_bytes()
    )
    descriptor_set = descriptor_pb2.FileDescriptorSet.FromString(raw)
    return {f.name: f.SerializeToString() for f in descriptor_set.file}


class DocumentedReflectionServicer(ReflectionServicer):  # type: ignore[misc]
    def __init__(self, service_names: Iterable[str]) -> None:
        super().__init__(tuple(service_names))
        self._documented = documented_files()

    def _with_comments(self, response: reflection_pb2.ServerReflectionResponse) -> Any:
        if response.HasField("file_descriptor_response"):
            files = response.file_descriptor_response.file_descriptor_proto
            for index, serialized in enumerate(files):
                name = descriptor_pb2.FileDescriptorProto.FromString(serialized).name
                if name in self._documented:
                    files[index] = self._documented[name]
        return response

    def _file_by_filename(self, request: Any, filename: str) -> Any:
        return self._with_comments(super()._file_by_filename(request, filename))

    def _file_containing_symbol(self, request: Any, fully_qualified_name: str) -> Any:
        return self._with_comments(super()._file_containing_symbol(request, fully_qualified_name))

    def _file_containing_extension(
        self, request: Any, containing_type: str, extension_number: int
    ) -> Any:
        return self._with_comments(
            super()._file_containing_extension(request, containing_type, extension_number)
        )
