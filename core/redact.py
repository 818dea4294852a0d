"""Masking credentials: the one helper every message, log line, traceback, tag and report goes through.

:func:`redact` hides

* the password of any URI with userinfo (``http://user:pass@host`` -> ``http://user:***@host``;
  a lone user part, often a token, becomes ``***``: ``https://TOKEN@host`` -> ``https://***@host``);
* secret query parameters (``?password=``, ``token=``, ``X-Amz-Signature=``, ...);
* the value of every environment variable that holds a secret (``AWS_SECRET_ACCESS_KEY``,
  ``AWS_SESSION_TOKEN``, ``MLFLOW_TRACKING_PASSWORD``, ``MLFLOW_TRACKING_TOKEN``, any name with
  ``SECRET``, ``PASSWORD``, ``TOKEN`` or ``CREDENTIAL``) and the passwords inside URIs held by
  environment variables (``GNOMON_REDIS_URL``, ``MLFLOW_TRACKING_URI``, ...), wherever they appear.

:class:`RedactingFilter` applies it to log records, :func:`install` to the root logger and
uncaught tracebacks of the CLI.
"""

from __future__ import annotations

import logging
import os
import re
import sys

MASK = "***"

_URI_USERINFO = re.compile(r"(?P<scheme>\b[A-Za-z][A-Za-z0-9+.\-]*://)(?P<user>[^\s/?#@:]*)(?::(?P<password>[^\s/?#@]*))?@")
_QUERY_SECRET = re.compile(
    r"(?i)(?P<key>[?&;](?:password|passwd|pwd|secret|token|access_token|api_key|apikey|sig|signature|"
    r"x-amz-signature|x-amz-credential|x-amz-security-token|aws_secret_access_key)=)(?P<value>[^&\s#'\"]+)")
_SECRET_NAME = re.compile(r"(?i)(SECRET|PASSWORD|PASSWD|TOKEN|CREDENTIAL|PRIVATE_KEY)")
_MIN_SECRET = 4  # shorter values would mask ordinary words


def _userinfo(match: re.Match) -> str:
    user, password = match.group("user"), match.group("password")
    if password is None:
        return f"{match.group('scheme')}{MASK}@" if user else match.group(0)
    return f"{match.group('scheme')}{user}:{MASK}@"


def secret_values(environ=None) -> list[str]:
    """Secret strings known from the environment, longest first."""
    environ = os.environ if environ is None else environ
    found = set()
    for name, value in environ.items():
        if not value:
            continue
        if _SECRET_NAME.search(name) and len(value) >= _MIN_SECRET:
            found.add(value)
        if "://" in value and "@" in value:
            for match in _URI_USERINFO.finditer(value):
                secret = match.group("password") or (match.group("user") if match.group("password") is None else "")
                if secret and len(secret) >= _MIN_SECRET:
                    found.add(secret)
    return sorted(found, key=len, reverse=True)


def redact(text, environ=None) -> str:
    """``text`` (any object, turned into a string) with every credential masked."""
    text = "" if text is None else str(text)
    if not text:
        return text
    text = _URI_USERINFO.sub(_userinfo, text)
    text = _QUERY_SECRET.sub(lambda m: m.group("key") + MASK, text)
    for secret in secret_values(environ):
        if secret in text:
            text = text.replace(secret, MASK)
    return text


class RedactingFilter(logging.Filter):
    """A logging filter that masks credentials in the formatted message (args included)."""

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # pragma: no cover - a broken record is logging's business
            return True
        cleaned = redact(message)
        if cleaned != message or record.exc_info:
            record.msg, record.args = cleaned, None
        if record.exc_info and not record.exc_text:
            record.exc_text = redact(logging.Formatter().formatException(record.exc_info))
        elif record.exc_text:
            record.exc_text = redact(record.exc_text)
        return True


_FILTER = RedactingFilter()


class RedactingStream:
    """A text stream that masks credentials in everything written to it (other attributes delegate)."""

    def __init__(self, stream):
        self._stream = stream

    def write(self, text: str) -> int:
        if not isinstance(text, str):  # like any text stream: click probes with write(b"") to find binary ones
            raise TypeError(f"write() argument must be str, not {type(text).__name__}")
        return self._stream.write(redact(text))

    def writelines(self, lines) -> None:
        for line in lines:
            self.write(line)

    def __getattr__(self, name: str):
        return getattr(self._stream, name)


def wrap_std_streams() -> None:
    """Route ``sys.stdout`` and ``sys.stderr`` through :class:`RedactingStream` (what libraries print too)."""
    for name in ("stdout", "stderr"):
        stream = getattr(sys, name)
        if stream is not None and not isinstance(stream, RedactingStream):
            setattr(sys, name, RedactingStream(stream))


def format_exception(exc: BaseException) -> str:
    """The traceback of ``exc``, credentials masked."""
    import traceback

    return redact("".join(traceback.format_exception(exc)))


def install(*logger_names: str) -> None:
    """Mask credentials in log records and in uncaught tracebacks.

    Adds :class:`RedactingFilter` to the handlers of the root logger and of ``logger_names`` (and to
    those loggers and gnomon's usual library loggers themselves), and wraps ``sys.excepthook``.
    """
    root = logging.getLogger()
    if not root.handlers:  # what logging's last-resort handler would print, but filtered
        handler = logging.StreamHandler()
        handler.setLevel(logging.WARNING)
        root.addHandler(handler)
    names = ("", "mlflow", "rq.worker", "rq.job", "urllib3", "botocore", "alembic", "gnomon", *logger_names)
    for name in names:
        logger = logging.getLogger(name)
        if _FILTER not in logger.filters:
            logger.addFilter(_FILTER)
        for handler in logger.handlers:
            if _FILTER not in handler.filters:
                handler.addFilter(_FILTER)
    if not getattr(sys.excepthook, "__gnomon__", False):
        previous = sys.excepthook

        def hook(exc_type, exc, tb):
            if exc is None or isinstance(exc, (KeyboardInterrupt, SystemExit)):
                return previous(exc_type, exc, tb)
            sys.stderr.write(format_exception(exc.with_traceback(tb)))

        hook.__gnomon__ = True
        sys.excepthook = hook
