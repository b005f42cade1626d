"""Local and S3 paths behind one fsspec interface. Credentials come from the environment and are never logged."""

from __future__ import annotations

import os
from dataclasses import dataclass
from urllib.parse import urlsplit, urlunsplit

import fsspec

_S3_SCHEMES = ("s3://", "s3a://", "s3n://")


def is_s3(uri: str) -> bool:
    return uri.startswith(_S3_SCHEMES)


def strip_userinfo(uri: str) -> str:
    """`scheme://user:password@host/path` -> `scheme://host/path` (credentials never become data); paths unchanged."""
    scheme, sep, rest = uri.partition("://")
    if not sep or "/" in scheme:
        return uri
    netloc, slash, path = rest.partition("/")
    return f"{scheme}://{netloc.rsplit('@', 1)[-1]}{slash}{path}" if "@" in netloc else uri


def strip_query(uri: str) -> str:
    parts = urlsplit(uri)
    if parts.scheme and parts.netloc:
        return urlunsplit((parts.scheme, parts.netloc.rsplit("@", 1)[-1], parts.path, "", ""))
    return uri


@dataclass(frozen=True)
class Storage:
    """Builds filesystems for URIs; picklable (holds only the endpoint, never credentials)."""

    endpoint_url: str | None = None

    @classmethod
    def from_env(cls, endpoint_url: str | None = None) -> "Storage":
        """The given S3-compatible endpoint, else AWS_ENDPOINT_URL_S3 / AWS_ENDPOINT_URL, else AWS's own."""
        return cls(endpoint_url or os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL"))

    def fs(self, uri: str) -> fsspec.AbstractFileSystem:
        if is_s3(uri):
            # no listings cache: s3fs would otherwise answer a second listing (and the sizes of objects it saw
            # listed) from the first one for the life of the process, missing what other processes wrote since
            kwargs: dict = {"config_kwargs": {"retries": {"max_attempts": 8, "mode": "adaptive"}}, "use_listings_cache": False}
            if self.endpoint_url:
                kwargs["client_kwargs"] = {"endpoint_url": self.endpoint_url}
            return fsspec.filesystem("s3", **kwargs)
        return fsspec.filesystem("file")

    def path(self, uri: str) -> str:
        """The filesystem-internal path (bucket/key for S3, absolute path for local)."""
        if is_s3(uri):
            return uri.split("://", 1)[1]
        return os.path.abspath(os.path.expanduser(uri))

    def uri(self, like: str, path: str) -> str:
        """Turns a filesystem path back into a URI of the same kind as `like`."""
        return f"s3://{path}" if is_s3(like) else path

    def join(self, base: str, *parts: str) -> str:
        base = base.rstrip("/") if is_s3(base) else os.path.abspath(os.path.expanduser(base))
        return "/".join([base, *parts]) if is_s3(base) else os.path.join(base, *parts)

    def write_bytes(self, uri: str, data: bytes) -> None:
        """Write a whole file to a local path (parent folders created) or an s3:// URI (one PUT)."""
        fs, path = self.fs(uri), self.path(uri)
        if not is_s3(uri):
            fs.makedirs(os.path.dirname(path), exist_ok=True)
        with fs.open(path, "wb") as f:
            f.write(data)

    def boto3_client(self):
        import boto3

        return boto3.client("s3", endpoint_url=self.endpoint_url) if self.endpoint_url else boto3.client("s3")
