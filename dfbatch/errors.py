"""Errors that reach the user as one line, and the one way a message is made safe to show or store.

`UserError` (and its kinds) is what the CLI prints without a traceback, exit code 2. `one_line` turns any
exception into the one-line text a row's `error` column or a user error carries; `redact` removes
credentials from every message, URI and parameter before it is printed, logged or stored.
"""

from __future__ import annotations

import os
import re


class UserError(Exception):
    """A mistake the user can fix: bad path, unknown model, bad flag value."""

    exit_code = 2


class ModelNotFound(UserError):
    """The requested model URI / file does not exist or is not a dfbatch model."""


class ConfigError(UserError):
    """A job config value the user can fix (from code, a flag or a YAML key): `problems` holds (field path,
    one-line message) pairs; the error's text is their messages on one line."""

    def __init__(self, problems: list[tuple[str, str]]):
        self.problems = list(problems)
        super().__init__("; ".join(dict.fromkeys(msg for _, msg in self.problems)))

    def __reduce__(self):
        return type(self), (self.problems,)


class CheckpointError(UserError):
    """A checkpoint file is unreadable, not weights-only, or does not match the model spec."""


SECRET_ENV_VARS = ("AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_ACCESS_KEY_ID", "MLFLOW_TRACKING_TOKEN",
                   "MLFLOW_TRACKING_PASSWORD")
_USERINFO = re.compile(r"(?i)([a-z][a-z0-9+.-]*://)[^/@\s]+@")
# user:password@ without a scheme (s3fs echoes 'user:pw@bucket')
_BARE_USERINFO = re.compile(r"(?<![\w/:*])[\w.%+~-]+:[^\s/@'\"]+@(?=[\w-])")
_SECRET_QUERY = re.compile(
    r"(?i)((?:X-Amz-[A-Za-z-]+|AWSAccessKeyId|password|passwd|pwd|token|secret|key|signature|credential)[\w.-]*=)[^&\s'\"]+")
_NAMES_PROBLEM = re.compile(r"error|cannot", re.I)


def redact(text: str | None) -> str:
    """`text` with credentials replaced by ***: `user:password@` in URIs, secret-looking query values, and the
    values of the secret environment variables (AWS keys, MLflow token/password) wherever they appear."""
    if not text:
        return ""
    text = _USERINFO.sub(r"\1***@", str(text))
    text = _BARE_USERINFO.sub("***@", text)
    text = _SECRET_QUERY.sub(r"\1***", text)
    for var in SECRET_ENV_VARS:
        secret = os.environ.get(var)
        if secret and len(secret) >= 4:
            text = text.replace(secret, "***")
    return text


def one_line(exc: BaseException, *, limit: int = 300, last: bool = False) -> str:
    """`Type: message` on one line, redacted, at most `limit` characters.

    An OSError naming a file gives its strerror (the caller knows the path, which may be a temp copy). A
    multi-line message (decord's C++ backtrace, a Ray task error) gives its first line that names the problem;
    `last` adds its last line too (where Ray puts the worker's own exception)."""
    if isinstance(getattr(exc, "strerror", None), str) and getattr(exc, "filename", None):
        text = exc.strerror
    else:
        lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
        text = next((ln for ln in lines if _NAMES_PROBLEM.search(ln)), lines[0]) if len(lines) > 1 else "".join(lines)
        if last and len(lines) > 1 and lines[-1] != text:
            text = f"{text} ... {lines[-1]}"
    return redact(f"{type(exc).__name__}: {text}" if text else type(exc).__name__)[:limit]
