"""S3 locations, clients and error messages.

Credentials come only from the standard boto3 chain (environment variables, shared
credentials/config files and ``AWS_PROFILE``, instance roles). The endpoint is
``--endpoint-url``, else ``AWS_ENDPOINT_URL_S3`` / ``AWS_ENDPOINT_URL``, else AWS. Nothing
here prints or logs a credential: error messages name the variables to check, never values.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from typing import Iterator

from . import RemoteError

AUTH_CODES = {"InvalidAccessKeyId", "SignatureDoesNotMatch", "AccessDenied", "403", "Forbidden",
              "InvalidToken", "ExpiredToken", "AuthorizationHeaderMalformed"}


@dataclass(frozen=True)
class S3Location:
    """``s3://bucket/prefix``; ``prefix`` has no leading or trailing slash (may be empty)."""

    bucket: str
    prefix: str = ""

    def key(self, *parts: str) -> str:
        """The object key ``prefix/part/part``."""
        return "/".join(p.strip("/") for p in (self.prefix, *parts) if p and p.strip("/"))

    def __str__(self) -> str:
        return f"s3://{self.bucket}/{self.prefix}" if self.prefix else f"s3://{self.bucket}"


def parse_s3_url(url: str) -> S3Location:
    """Parse ``s3://BUCKET[/PREFIX]``; anything else is a clear error."""
    if not isinstance(url, str) or not url.startswith("s3://"):
        raise RemoteError(f"expected an S3 URL like s3://BUCKET/PREFIX, got '{url}'")
    rest = url[len("s3://"):]
    bucket, _, prefix = rest.partition("/")
    if not bucket:
        raise RemoteError(f"S3 URL '{url}' has no bucket name (expected s3://BUCKET/PREFIX)")
    return S3Location(bucket, prefix.strip("/"))


def endpoint_url(explicit: str | None = None) -> str | None:
    """The S3 endpoint: ``explicit``, else ``AWS_ENDPOINT_URL_S3``, else ``AWS_ENDPOINT_URL``, else None (AWS)."""
    return explicit or os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL") or None


def make_client(endpoint: str | None = None, *, max_pool: int = 32):
    """A thread-safe S3 client from the standard credential chain.

    Built with botocore directly: importing boto3 (and its s3transfer) costs more start-up
    time than a whole no-op sync.
    """
    from botocore.config import Config

    endpoint = endpoint_url(endpoint)
    config = Config(
        max_pool_connections=max_pool,
        retries={"max_attempts": 3, "mode": "standard"},
        connect_timeout=5,
        read_timeout=60,
        s3={"addressing_style": "path"} if endpoint else {},
    )
    session = _botocore_session()
    region = session.get_config_variable("region") or "us-east-1"
    return session.create_client("s3", endpoint_url=endpoint, region_name=region, config=config)


_LOADER = None


def _botocore_session():
    """A fresh botocore session (credentials resolved anew each time) sharing one model loader.

    Parsing botocore's JSON service models is most of the cost of creating a client; the loader
    caches them, so a process that makes several clients pays it once.
    """
    import botocore.loaders
    import botocore.session

    global _LOADER
    session = botocore.session.get_session()
    if _LOADER is None:
        _LOADER = session.get_component("data_loader")
    else:
        session.register_component("data_loader", _LOADER)
    return session


def error_code(exc: BaseException) -> str:
    """The S3 error code of a botocore ``ClientError`` ('' for other exceptions)."""
    response = getattr(exc, "response", None) or {}
    return str(response.get("Error", {}).get("Code", ""))


def is_not_found(exc: BaseException) -> bool:
    return error_code(exc) in {"404", "NoSuchKey", "NotFound"}


def describe_error(exc: BaseException, action: str, where: str, endpoint: str | None = None) -> str:
    """A one-line message for a failed S3 call, without any credential value."""
    from botocore.exceptions import (
        ClientError,
        EndpointConnectionError,
        NoCredentialsError,
        PartialCredentialsError,
    )

    from ..redact import redact

    at = f" at {redact(endpoint)}" if endpoint else ""
    if isinstance(exc, (NoCredentialsError, PartialCredentialsError)):
        return (f"cannot {action} {where}: no S3 credentials found; set AWS_ACCESS_KEY_ID and "
                "AWS_SECRET_ACCESS_KEY or AWS_PROFILE (see docs/deployment.md)")
    if isinstance(exc, EndpointConnectionError):
        return f"cannot {action} {where}: cannot connect to the S3 endpoint{at or ' (AWS)'}; check --endpoint-url / AWS_ENDPOINT_URL"
    if isinstance(exc, ClientError):
        code = error_code(exc)
        if code in AUTH_CODES:
            return (f"cannot {action} {where}: S3{at} rejected the credentials ({code}); check AWS_ACCESS_KEY_ID / "
                    "AWS_SECRET_ACCESS_KEY / AWS_PROFILE and the bucket's permissions")
        if code == "NoSuchBucket":
            return f"cannot {action} {where}: the bucket does not exist{at}"
        return f"cannot {action} {where}: S3 error {code or type(exc).__name__}{at}"
    return f"cannot {action} {where}: {type(exc).__name__}: {exc}"


@contextlib.contextmanager
def s3_errors(action: str, where: str, endpoint: str | None = None) -> Iterator[None]:
    """Turn botocore errors raised inside the block into a one-line :class:`RemoteError`."""
    try:
        yield
    except RemoteError:
        raise
    except Exception as exc:
        if type(exc).__module__.split(".")[0] not in {"botocore", "boto3", "urllib3"}:
            raise
        raise RemoteError(describe_error(exc, action, where, endpoint_url(endpoint))) from None


#: The largest manifest or pointer a reader accepts (a manifest lists plugins: a few KB each).
MANIFEST_MAX_BYTES = 16 * 2**20


def read_body(response, limit: int, what: str) -> bytes:
    """The body of a ``get_object`` response, read in chunks and refused past ``limit`` bytes.

    A hostile or broken store cannot make a reader hold more than ``limit + 1 MB`` in memory.
    """
    from . import IntegrityError

    body, chunks, total = response["Body"], [], 0
    while True:
        chunk = body.read(2**20)
        if not chunk:
            return b"".join(chunks)
        total += len(chunk)
        if total > limit:
            body.close()
            raise IntegrityError(f"{what} is larger than {limit} bytes; refusing to read it")
        chunks.append(chunk)
