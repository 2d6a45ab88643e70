"""Who may use the status page: HTTP basic authentication for people (a browser asks for it by itself),
a bearer token for Prometheus on ``/metrics``, and the checks that keep another web site from using an
operator's browser against the page (a CSRF token and a same-origin check on every POST, and, on a page
without a password, a Host check against DNS rebinding). Secrets are compared with
``hmac.compare_digest`` and never logged."""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import ipaddress
import secrets
from dataclasses import dataclass, field
from email.message import Message
from pathlib import Path
from urllib.parse import urlsplit

from db.errors import ConfigurationError


def read_secret(path: Path, key: str) -> str:
    """The secret in ``path`` (one line; a final newline is not part of it); errors name ``key``."""
    try:
        value = Path(path).read_text(encoding="utf-8").rstrip("\r\n")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigurationError(f"{key}: cannot read {str(path)!r}: {getattr(exc, 'strerror', None) or exc}") \
            from exc
    if not value.strip():
        raise ConfigurationError(f"{key}: {str(path)!r} is empty")
    return value


def is_loopback(host: str) -> bool:
    """True for ``localhost`` and loopback addresses (127.0.0.0/8, ::1); any other name is not."""
    host = host.strip().lower().removeprefix("[").removesuffix("]")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _host_name(host_header: str) -> str:
    return urlsplit(f"//{host_header}").hostname or ""


@dataclass(frozen=True)
class Access:
    """The page's credentials; empty ones leave that part open."""

    username: str = ""
    password: str = field(default="", repr=False)  # empty: no authentication (only allowed on loopback)
    metrics_token: str = field(default="", repr=False)  # empty: /metrics open
    allowed_hosts: tuple[str, ...] = ()  # names a page without password answers besides loopback ones
    csrf_secret: bytes = field(default_factory=lambda: secrets.token_bytes(32), repr=False)

    @property
    def protected(self) -> bool:
        return bool(self.password)

    def person(self, authorization: str | None) -> bool:
        """Whether a request for the page (HTML, JSON, the retry form) may be answered."""
        if not self.password:
            return True
        scheme, _, value = (authorization or "").partition(" ")
        if scheme.lower() != "basic":
            return False
        try:
            username, colon, password = base64.b64decode(value.strip(), validate=True).decode("utf-8").partition(":")
        except (binascii.Error, UnicodeDecodeError):
            return False
        same_user = hmac.compare_digest(username.encode(), self.username.encode())
        same_password = hmac.compare_digest(password.encode(), self.password.encode())
        return bool(colon) and same_user and same_password

    def scraper(self, authorization: str | None) -> bool:
        """Whether a request for ``/metrics`` may be answered."""
        if not self.metrics_token:
            return True
        scheme, _, value = (authorization or "").partition(" ")
        return scheme.lower() == "bearer" and hmac.compare_digest(value.strip().encode(), self.metrics_token.encode())

    def host_allowed(self, host_header: str | None) -> bool:
        """A page without a password answers only requests addressed to a loopback name or to one of
        ``allowed_hosts`` (an authenticating proxy's): a web page whose own name was made to resolve to
        127.0.0.1 (DNS rebinding) must not read it."""
        name = _host_name(host_header or "")
        return self.protected or is_loopback(name) or name in self.allowed_hosts

    @property
    def csrf_token(self) -> str:
        """The token the page's forms carry: another site cannot read it from the page."""
        return hmac.new(self.csrf_secret, b"ainode status page form", hashlib.sha256).hexdigest()

    def form_allowed(self, headers: Message, token: str) -> str | None:
        """None when a POST may be acted on; otherwise why not (one sentence for the 403)."""
        if not hmac.compare_digest(token.encode(), self.csrf_token.encode()):
            return "the form's token is missing or wrong: reload the page and try again"
        fetch_site = headers.get("Sec-Fetch-Site")
        if fetch_site is not None and fetch_site != "same-origin":
            return "the form was sent from another site"
        origin = headers.get("Origin") or headers.get("Referer") or ""
        host = (headers.get("Host") or "").lower()
        if not origin or origin == "null" or urlsplit(origin).netloc.lower() != host or not host:
            return "the form was not sent from this page (its Origin or Referer does not name this host)"
        return None
