"""Every way a node's enrollment can fail, as one line a person can act on (no traceback)."""
from __future__ import annotations

import re

import josepy as jose
import requests
from acme import errors as acme_errors
from acme import messages

from nodetrust.bootstrap import BootstrapError


class EnrollError(Exception):
    """A failure the client detected itself; the message is the whole story."""


def describe_problem(err: messages.Error) -> str:
    """`badAttestationStatement: signature: ...` (RFC 7807 type short name, then detail)."""
    code = err.code or (err.typ or "error").rsplit(":", 1)[-1]
    detail = err.detail or err.title or ""
    return f"{code}: {detail}" if detail else code


def _reason(exc: BaseException) -> str:
    """The useful tail of a requests/urllib3 error ('[Errno 111] Connection refused')."""
    text = str(exc)
    for pattern in (r"\[Errno -?\d+\] [^'\")\]]+", r"certificate verify failed: [^'\")(]+",
                    r"Read timed out", r"timed out"):
        m = re.search(pattern, text)
        if m:
            return m.group(0).strip(" .")
    return type(exc).__name__


def one_line(exc: BaseException, server: str) -> str:
    """Map an exception from enroll() to a single line; unknown types get their class name."""
    if isinstance(exc, messages.Error):  # an ACME problem document from the server
        msg = f"the server refused: {describe_problem(exc)}"
    elif isinstance(exc, requests.exceptions.SSLError):
        msg = (f"TLS to {server} failed ({_reason(exc)}): pass --ca-bundle with the server's "
               "root certificate")
    elif isinstance(exc, requests.exceptions.Timeout):
        msg = f"{server} did not answer in time ({_reason(exc)})"
    elif isinstance(exc, requests.exceptions.ConnectionError):
        msg = f"cannot reach {server} ({_reason(exc)})"
    elif isinstance(exc, requests.exceptions.RequestException):
        msg = f"request to {server} failed ({_reason(exc)})"
    elif isinstance(exc, acme_errors.TimeoutError):
        msg = "timed out waiting for the server"
    elif isinstance(exc, acme_errors.Error):  # ClientError, UnexpectedUpdate, ...
        msg = f"unexpected answer from the server ({type(exc).__name__}: {exc})"
    elif isinstance(exc, jose.DeserializationError):
        msg = f"unexpected answer from the server (cannot parse it: {exc})"
    elif isinstance(exc, (EnrollError, BootstrapError)):
        msg = str(exc)
    elif isinstance(exc, OSError):
        msg = f"{exc.strerror or exc}" + (f": {exc.filename}" if exc.filename else "")
    else:
        msg = f"{type(exc).__name__}: {exc}"
    return " ".join(msg.split())


ENROLL_ERRORS: tuple[type[BaseException], ...] = (
    messages.Error, requests.exceptions.RequestException, acme_errors.Error,
    jose.DeserializationError, EnrollError, BootstrapError, OSError, ValueError)

