"""KServe's model-repository extension (load/unload over REST and gRPC), closed unless asked.

kserve serves it by default: anyone who reaches the port can unload the model. kembed serves one
model loaded at start, so the extension is off unless `--enable_model_repository` turns it on.
"""

from __future__ import annotations

import grpc
from fastapi import Request
from fastapi.responses import JSONResponse
from grpc_interceptor.exceptions import GrpcException

MESSAGE = "the model repository extension (load/unload) is disabled; start the server with --enable_model_repository"


class RepositoryDisabled(GrpcException):
    """404 over REST (see `repository_disabled_handler`); NOT_FOUND over gRPC."""

    def __init__(self) -> None:
        super().__init__(details=MESSAGE, status_code=grpc.StatusCode.NOT_FOUND)


class ClosedRepository:
    """Stands in for kserve's ModelRepositoryExtension: every load and unload is refused."""

    async def index(self, filter_ready: bool | None = False) -> list[dict[str, str]]:
        raise RepositoryDisabled()

    async def load(self, model_name: str) -> None:
        raise RepositoryDisabled()

    async def unload(self, model_name: str) -> None:
        raise RepositoryDisabled()


async def repository_disabled_handler(_: Request, exc: Exception) -> JSONResponse:
    return JSONResponse(status_code=404, content={"error": MESSAGE})
