"""The connection to one Exchange mailbox over EWS (exchangelib), behind the egress guard, and what its
errors mean.

Errors are mapped to sync.errors.MailboxError codes (auth_failed, unreachable,
tls_failed, protocol, ews_mailbox_denied, and the guard's response_too_large /
response_too_slow), so the migration and the UI treat both protocols alike.

Why a Protocol subclass: exchangelib picks its HTTP adapter from the global
class attribute BaseProtocol.HTTP_ADAPTER_CLS and caches Protocol objects per
(endpoint, credentials) for the whole process. Changing the global would
affect every other connection; the cache would keep credentials and a pinned
address alive. So every connection builds its own _GuardedProtocol outside
that cache, and its sessions mount a PinnedAdapter: TCP goes to the address
the guard checked, TLS verifies the URL's host name, an account's own CA
(PEM) is trusted in addition to the system's, verification is never off, and
every answer is capped (EWS_MAX_RESPONSE_BYTES, EWS_MAX_RESPONSE_SECONDS).

NTLM carries the TLS channel binding (Extended Protection, which Exchange Server
2019 CU14+ requires by default; RFC 5929 "tls-server-end-point", MS-NLMP
MsvAvChannelBindings): exchangelib's NTLM is requests_ntlm, which hashes the
certificate of the socket the 401 arrived on. That needs the response's raw
urllib3 object with its socket still open, so nothing in the adapter may read
a body before the auth hook has seen it (tests/test_ews_extended_protection.py).
"""

import re
import ssl
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import requests
from django.conf import settings
from exchangelib import BASIC, DELEGATE, NTLM, Account, Build, Configuration, Credentials, Version
from exchangelib.errors import (
    CASError, EWSError, ErrorAccessDenied, ErrorConnectionFailed, ErrorImpersonateUserDenied,
    ErrorInternalServerTransientError, ErrorMailboxMoveInProgress, ErrorMailboxStoreUnavailable,
    ErrorNonExistentMailbox, ErrorServerBusy, ErrorTimeoutExpired, ErrorTooManyObjectsOpened,
    MalformedResponseError, RateLimitError, TransportError, UnauthorizedError,
)
from exchangelib.protocol import CachingProtocol, FaultTolerance, Protocol
from urllib3.exceptions import ConnectTimeoutError, NewConnectionError

from sync import egress
from sync.egress import EgressError, EgressRefused, PinnedAdapter, resolve_checked
from sync.errors import MailboxError

# Errors that say the server is busy or down, not that an item is bad: the run fails and is tried again.
TRANSIENT = (ErrorServerBusy, ErrorTimeoutExpired, ErrorMailboxStoreUnavailable, ErrorInternalServerTransientError,
             ErrorMailboxMoveInProgress, ErrorConnectionFailed, ErrorTooManyObjectsOpened)
# This login may not open this mailbox (ErrorAccessDenied, ErrorNonExistentMailbox): not a refused password.
MAILBOX_DENIED = "ews_mailbox_denied"
READ_TIMEOUT = 60  # seconds for one EWS answer (a page of 512 changes can take a while)
AUTH_TYPES = {"ntlm": NTLM, "basic": BASIC}


@dataclass(frozen=True)
class EwsSettings:
    url: str  # https://mail.example.com/EWS/Exchange.asmx
    username: str  # DOMAIN\user or user@domain (UPN)
    address: str  # the mailbox's primary SMTP address
    auth_type: str = "ntlm"
    ca_pem: str = ""  # the customer's own CA certificate(s), PEM
    version: str = ""  # "15.1.2507.6"; empty: ask the server once per connection


def error_code(code: str) -> str:
    """Exchange's own wording for the codes where IMAP's advice would mislead (app passwords, no CA field)."""
    return f"ews_{code}" if code in ("auth_failed", "tls_failed") else code


_BACK_OFF_MS = re.compile(rb'Name="BackOffMilliseconds"[^>]*>\s*(\d+)\s*<')
# A minimal request for the fresh sign-in that decides whether a 401 means a refused password.
_SIGN_IN_PROBE = (
    '<?xml version="1.0" encoding="utf-8"?><s:Envelope xmlns:s="http://schemas.xmlsoap.org/soap/envelope/" '
    'xmlns:m="http://schemas.microsoft.com/exchange/services/2006/messages" '
    'xmlns:t="http://schemas.microsoft.com/exchange/services/2006/types"><s:Body><m:GetFolder>'
    "<m:FolderShape><t:BaseShape>IdOnly</t:BaseShape></m:FolderShape><m:FolderIds>"
    '<t:DistinguishedFolderId Id="msgfolderroot"/></m:FolderIds></m:GetFolder></s:Body></s:Envelope>'
).encode()


class PasswordRefused(UnauthorizedError):
    """A 401, and a fresh sign-in on a new connection was refused too."""


class _BoundedFaultTolerance(FaultTolerance):
    """exchangelib's fault-tolerant retry (Microsoft, "EWS throttling in Exchange": wait the
    BackOffMilliseconds of ErrorServerBusy, then try again), bounded twice: a single back-off longer
    than settings.EWS_RETRY_MAX_WAIT, or more than settings.EWS_RETRY_BUDGET seconds of waiting on
    one connection, gives up with RateLimitError (a transient "protocol" error: the next run tries
    again). exchangelib itself only caps each single wait.

    The back-off is honoured in both forms Exchange uses: a SOAP fault (often in an HTTP 500),
    which exchangelib reads itself, and an ErrorServerBusy response message, whose MessageXml
    exchangelib does not read (it would wait its own RETRY_WAIT): read here from the body.

    A 401 is not taken for a refused password at once: Exchange also answers 401 while it
    throttles. It is one only when a fresh sign-in on a new connection (sign_in_refused) is
    refused too; otherwise the request is tried again after a back-off.
    """

    MAX_BACK_OFFS = 100  # also bounded in number: back-offs of 0 ms would never use up the budget

    def __init__(self, *, max_wait: float, budget: float):
        super().__init__(max_wait=max_wait)
        self.budget = budget
        self.waited, self.back_offs = 0.0, 0
        self.hint: float | None = None  # BackOffMilliseconds of the last busy answer, in seconds
        self.sign_in_refused = None  # set by open_account: () -> bool
        self.on_wait = None  # () -> None before each wait: verify's heartbeat (a wait is no sign of a stuck worker)

    def __getstate__(self):
        state = super().__getstate__()
        state["sign_in_refused"] = state["on_wait"] = None
        return state

    def back_off(self, seconds):
        if self.hint is not None:
            seconds, self.hint = self.hint, None
        if seconds is None:
            seconds = min(self.DEFAULT_BACKOFF, self.max_wait)
        self.back_offs += 1
        if seconds > self.max_wait or self.waited + seconds > self.budget or self.back_offs > self.MAX_BACK_OFFS:
            raise RateLimitError("EWS back-off budget exhausted", wait=seconds)
        self.waited += seconds
        if self.on_wait is not None:
            self.on_wait()
        super().back_off(seconds)

    def raise_response_errors(self, response):
        if response.status_code == 401 and b"locked out" not in (response.content or b""):
            if self.sign_in_refused is not None and self.sign_in_refused():
                raise PasswordRefused(f"Invalid credentials for {response.url}")
            raise ErrorServerBusy("Caused by HTTP 401 response (throttling)")
        if response.status_code in (200, 500) and b"ErrorServerBusy" in (response.content or b""):
            found = _BACK_OFF_MS.search(response.content)
            self.hint = int(found.group(1)) / 1000.0 if found else None
        try:
            return super().raise_response_errors(response)
        except MalformedResponseError:
            # exchangelib retries 503 and some 500s; a load balancer's 502/504 or an IIS error page in a 500
            # is as passing: tried again after a back-off, then a transient error (RateLimitError).
            if 500 <= response.status_code < 600:
                raise ErrorInternalServerTransientError(f"HTTP {response.status_code}") from None
            raise


class _GuardedProtocol(Protocol):
    def __init__(self, *, config, host: str, address: str, ca_pem: str):
        self._pin = {"host": host, "address": address, "ca_pem": ca_pem}
        super().__init__(config=config)
        self.TIMEOUT = (settings.MAIL_CONNECT_TIMEOUT, READ_TIMEOUT)
        # exchangelib's first wait when the server names none (doubling per retry); bounded by the policy.
        self.RETRY_WAIT = settings.EWS_RETRY_WAIT

    def sign_in_refused(self) -> bool:
        """A fresh sign-in on a new connection: is it refused (401) too? Anything else: not refused."""
        session = self.create_session()
        try:
            response = session.post(self.service_endpoint, data=_SIGN_IN_PROBE, allow_redirects=False,
                                     timeout=self.TIMEOUT, headers={"Content-Type": "text/xml; charset=utf-8"})
            return response.status_code == 401
        except (requests.RequestException, OSError):
            return False
        finally:
            session.close()

    def create_session(self):
        session = super().create_session()
        # No proxies, netrc or CA bundle from the environment (they would bypass the pin).
        session.trust_env = False
        # Same pool settings exchangelib uses (one connection, no urllib3 retries).
        # Every answer is capped (EWS_MAX_RESPONSE_BYTES after decompression, EWS_MAX_RESPONSE_SECONDS in all):
        # exchangelib itself reads a body whole, however big it inflates (issue 10: a ~400 KB gzip answer
        # raised a worker's memory by ~470 MB).
        session.mount(self.service_endpoint, PinnedAdapter(
            **self._pin, pool_block=True, pool_connections=1, pool_maxsize=1, max_retries=0,
            max_bytes=settings.EWS_MAX_RESPONSE_BYTES, max_seconds=settings.EWS_MAX_RESPONSE_SECONDS,
        ))
        return session


@contextmanager
def open_account(server: EwsSettings, password: str):
    """An exchangelib Account whose every request goes through the egress guard."""
    scheme, host, port = egress.split_url(server.url)
    if scheme != "https":
        # Basic and NTLM over plain http would expose the credentials; whoever set the URL.
        raise MailboxError("tls_failed", permanent=True)
    # Resolved and checked once; exchangelib then only ever talks to this address.
    address = resolve_checked(host, port)
    config = Configuration(
        service_endpoint=server.url, credentials=Credentials(server.username, password),
        auth_type=AUTH_TYPES.get(server.auth_type, NTLM),
        version=Version(build=Build(*map(int, server.version.split(".")))) if server.version else None,
        retry_policy=_BoundedFaultTolerance(max_wait=settings.EWS_RETRY_MAX_WAIT, budget=settings.EWS_RETRY_BUDGET),
    )
    protocol = _GuardedProtocol.__new__(_GuardedProtocol)  # not through CachingProtocol.__call__
    protocol.__init__(config=config, host=host, address=address, ca_pem=server.ca_pem)
    config.retry_policy.sign_in_refused = protocol.sign_in_refused
    # Account(config=...) asks CachingProtocol for a plain Protocol (no network
    # I/O happens there); drop that from the process-wide cache and use ours.
    account = Account(primary_smtp_address=server.address, config=config, autodiscover=False, access_type=DELEGATE)
    with CachingProtocol._protocol_cache_lock:
        CachingProtocol._protocol_cache.pop(CachingProtocol._cache_key(config), None)
    account.protocol = protocol
    try:
        yield account
    finally:
        protocol.close()


@contextmanager
def mailbox_errors():
    """Translate what exchangelib, requests and the guard raise into MailboxError codes.

    permanent=False only where the same attempt may work later: the server answered but was busy beyond the
    retry budget, slow, reset the connection or answered a 5xx (the migration then waits in verifying and
    tries again). A server that never answered (unknown name, closed port, no route, connect timeout), a
    refused password, a mailbox the login may not open, TLS, an answer beyond EWS_MAX_RESPONSE_BYTES and
    EWS errors about the request itself are permanent.
    """
    try:
        yield
    except MailboxError:
        raise
    except EgressRefused as error:
        # The policy or DNS refused the destination; only "resolver" (DNS could not be asked) may pass.
        raise MailboxError(error.code, permanent=error.reason != "resolver") from None
    except EgressError as error:
        permanent = error.code in ("tls_failed", "response_too_large") or _never_connected(error)
        raise MailboxError(error.code, permanent=permanent) from None
    except UnauthorizedError:
        raise MailboxError("auth_failed", permanent=True) from None
    except (ErrorAccessDenied, ErrorNonExistentMailbox, ErrorImpersonateUserDenied):
        # The sign-in worked, but this login may not open this mailbox (no rights on it, or no mailbox at
        # this address): not a wrong password, and no reason to stop the sync as one (no lockout risk).
        raise MailboxError(MAILBOX_DENIED, permanent=True) from None
    except (TransportError, EWSError, CASError, requests.RequestException, OSError) as error:
        # Read through the chain: exchangelib's version guess wraps whatever stopped it in a TransportError.
        chain = list(_chain(error))
        if _caused_by_tls(error):
            raise MailboxError("tls_failed", permanent=True) from None
        if _never_connected(error):
            raise MailboxError("unreachable", permanent=True) from None
        if any(isinstance(e, (ErrorTimeoutExpired, requests.ConnectionError, requests.Timeout, OSError)) for e in chain):
            raise MailboxError("unreachable", permanent=False) from None
        transient = any(isinstance(e, TRANSIENT + (RateLimitError,)) for e in chain)
        raise MailboxError("protocol", permanent=not transient) from None


def _chain(error: BaseException) -> Iterator[BaseException]:
    # exchangelib and the guard re-raise inside except blocks: the original stays reachable through
    # __cause__/__context__ (urllib3's MaxRetryError keeps its reason as __cause__).
    seen = 0
    while error is not None and seen < 12:
        yield error
        error = error.__cause__ or error.__context__
        seen += 1


def _never_connected(error: BaseException) -> bool:
    """No TCP connection came about (refused, no route, connect timeout): the host or port is wrong or down."""
    return any(isinstance(e, (NewConnectionError, ConnectTimeoutError)) for e in _chain(error))


def _caused_by_tls(error: BaseException) -> bool:
    return any(isinstance(e, (ssl.SSLError, ssl.CertificateError, requests.exceptions.SSLError)) for e in _chain(error))
