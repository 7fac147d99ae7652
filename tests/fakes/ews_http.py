"""The HTTP side of the fake EWS endpoint (tests.fakes.ews): sign-in (Basic, NTLM, NTLM with channel
binding), throttling, and answers that are hostile on the wire (a compressed bomb, a body that drips)."""

import base64
import gzip
import hashlib
import socket
import struct
import time
from http.server import BaseHTTPRequestHandler
from xml.etree import ElementTree as ET

import spnego
import spnego.exceptions
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.serialization import Encoding
from spnego._ntlm_raw.messages import AvId, Authenticate, NTClientChallengeV2  # pyspnego's own NTLM parser

from tests.fakes.ews_xml import ENVELOPE, S, _back_off_xml, _busy_fault, _error

BOMB_MEMBER_BYTES = 1 << 20  # one gzip member of spaces; the bomb repeats it (gzip allows many members, RFC 1952)


def channel_bindings_of(cert_pem: str) -> spnego.channel_bindings.GssChannelBindings:
    """The TLS channel binding of a server certificate, as a Windows server computes it.

    RFC 5929 section 4.1 ("tls-server-end-point"): the hash of the DER certificate with the hash of its
    signature algorithm, SHA-256 when that is MD5 or SHA-1. MS-NLMP 2.2.2.1 (MsvAvChannelBindings) carries
    the MD5 of the gss_channel_bindings_struct whose application data is "tls-server-end-point:" + hash
    (RFC 5056, RFC 5929 section 4).
    """
    cert = x509.load_pem_x509_certificate(cert_pem.encode())
    algorithm = cert.signature_hash_algorithm
    if algorithm is None or algorithm.name in ("md5", "sha1"):
        algorithm = hashes.SHA256()
    digest = hashes.Hash(algorithm)
    digest.update(cert.public_bytes(Encoding.DER))
    return spnego.channel_bindings.GssChannelBindings(application_data=b"tls-server-end-point:" + digest.finalize())


def _sent_bindings(token: bytes) -> bytes | None:
    """The MsvAvChannelBindings (16 bytes, MS-NLMP 2.2.2.1) of an NTLMv2 AUTHENTICATE message, or None."""
    try:
        response = Authenticate.unpack(token).nt_challenge_response
        if not response or len(response) <= 24:
            return None  # NTLMv1 has no AV pairs, so no channel binding
        return NTClientChallengeV2.unpack(response[16:]).av_pairs.get(AvId.channel_bindings)
    except (ValueError, KeyError, IndexError):
        return None


def _bomb(size: int) -> bytes:
    """A gzip body that inflates to about `size` bytes of SOAP (an envelope padded with spaces): about
    1 KB per MiB, so ~400 KB for the 400 MB that raised a worker's memory by ~470 MB (issue 10)."""
    head = ENVELOPE.split("{body}")[0].encode()
    tail = ENVELOPE.split("{body}")[1].encode()
    member = _bomb_member()
    return gzip.compress(head) + member * max(1, size // BOMB_MEMBER_BYTES) + gzip.compress(tail)


_MEMBER = []


def _bomb_member() -> bytes:
    if not _MEMBER:
        _MEMBER.append(gzip.compress(b" " * BOMB_MEMBER_BYTES, compresslevel=9))
    return _MEMBER[0]


def handler(fake):
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        disable_nagle_algorithm = True  # headers and body go out as separate writes

        def log_message(self, *args):  # keep test output clean
            pass

        def do_POST(self):
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            with fake._lock:
                fake.requests += 1
                number = fake.requests
            if fake.reset:
                fake.calls.append("reset")
                # SO_LINGER with a zero timeout: close() sends RST instead of FIN.
                self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                self.close_connection = True
                self.connection.close()
                return None
            if fake.http_error is not None:
                fake.calls.append(f"http-{fake.http_error[0]}")
                self._send(fake.http_error[0], fake.http_error[1], {"Content-Type": "text/html"})
                return None
            if fake.unauthorized_every and number % fake.unauthorized_every == 0:
                fake.calls.append("401-throttled")
                self._send(401, b"", {"WWW-Authenticate": 'Basic realm="fake"'})
                return None
            if not self._authenticated():
                return None
            request = ET.fromstring(body).find(f"{{{S}}}Body")[0]
            operation = request.tag.split("}", 1)[1]
            fake.calls.append(operation)
            if fake.busy_every and number % fake.busy_every == 0:
                fake.calls.append("busy")
                if fake.busy_form == "fault":
                    self._send(500, _busy_fault(fake.busy_back_off_ms).encode(),
                               {"Content-Type": "text/xml; charset=utf-8"})
                    return None
                messages = _error(operation, "ErrorServerBusy", "The server cannot service this request right now.",
                                  extra=_back_off_xml(fake.busy_back_off_ms))
                answer = ENVELOPE.format(body=f"<m:{operation}Response><m:ResponseMessages>{messages}"
                                              f"</m:ResponseMessages></m:{operation}Response>")
                self._send(200, answer.encode(), {"Content-Type": "text/xml; charset=utf-8"})
                return None
            if fake.bomb in (operation, "*"):
                # A hostile or broken server (issue 10): a small gzip body that inflates to bomb_bytes.
                fake.calls.append("bomb")
                self._send(200, _bomb(fake.bomb_bytes),
                           {"Content-Type": "text/xml; charset=utf-8", "Content-Encoding": "gzip"})
                return None
            messages = fake.answer(operation, request)
            answer = ENVELOPE.format(body=f"<m:{operation}Response><m:ResponseMessages>{messages}"
                                          f"</m:ResponseMessages></m:{operation}Response>")
            if fake.drip_seconds and operation == (fake.drip_operation or operation):
                self._drip(answer.encode())
                return None
            self._send(200, answer.encode(), {"Content-Type": "text/xml; charset=utf-8"})

        def _drip(self, payload: bytes) -> None:
            """The headers at once, then one byte every drip_seconds: each read is quick, the answer never ends."""
            fake.calls.append("drip")
            self.send_response(200)
            self.send_header("Content-Type", "text/xml; charset=utf-8")
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.flush()
            try:
                for offset in range(len(payload)):
                    self.wfile.write(payload[offset : offset + 1])
                    self.wfile.flush()
                    time.sleep(fake.drip_seconds)
            except OSError:
                pass  # the client gave up and shut the connection down
            self.close_connection = True

        def _authenticated(self) -> bool:
            header = self.headers.get("Authorization") or ""
            if fake.auth == "basic":
                expected = base64.b64encode(f"{fake.username}:{fake.password}".encode()).decode()
                if header == f"Basic {expected}":
                    return True
                fake.calls.append("401")
                self._send(401, b"", {"WWW-Authenticate": 'Basic realm="fake"'})
                return False
            # NTLM authenticates the TCP connection, not the request (IIS does the same):
            # this handler object lives as long as the connection.
            if getattr(self, "ntlm_done", False):
                return True
            if not header.startswith("NTLM "):
                fake.calls.append("401")
                self._send(401, b"", {"WWW-Authenticate": "Negotiate, NTLM"})
                return False
            if not hasattr(self, "ntlm"):
                bindings = channel_bindings_of(fake.cert_pem) if fake.extended_protection else None
                self.ntlm = spnego.server(protocol="ntlm", channel_bindings=bindings)
            token = base64.b64decode(header[5:])
            try:
                if fake.extended_protection and getattr(self, "ntlm_challenged", False):  # the AUTHENTICATE
                    self._check_bindings(token)
                answer = self.ntlm.step(token)
            except spnego.exceptions.SpnegoError as error:
                fake.calls.append("401-bindings" if isinstance(error, spnego.exceptions.BadBindingsError) else "401")
                del self.ntlm
                self.__dict__.pop("ntlm_challenged", None)
                self._send(401, b"", {"WWW-Authenticate": "Negotiate, NTLM"})
                return False
            if not self.ntlm.complete:  # the challenge
                fake.calls.append("ntlm-challenge")
                self.ntlm_challenged = True
                self._send(401, b"", {"WWW-Authenticate": "NTLM " + base64.b64encode(answer).decode()})
                return False
            fake.calls.append("ntlm-ok")
            self.ntlm_done = True
            return True

        def _check_bindings(self, token: bytes) -> None:
            """Extended Protection set to "Require" (Microsoft: "Configure Windows Extended Protection in
            Exchange Server", on by default since Exchange Server 2019 CU14; Set-WebServicesVirtualDirectory
            -ExtendedProtectionTokenChecking Require): an AUTHENTICATE without this server's channel binding is
            refused. pyspnego's acceptor refuses a missing or different binding but lets an all-zero one
            through (MS-NLMP 3.2.5.1.2 allows that when the server does not require bindings), so the fake
            refuses that one itself, as IIS does in "Require" mode."""
            sent = _sent_bindings(token)
            expected = hashlib.md5(channel_bindings_of(fake.cert_pem).pack()).digest()  # noqa: S324 - MS-NLMP's MD5
            if sent != expected:
                raise spnego.exceptions.BadBindingsError(context_msg="no or another channel binding")

        def _send(self, status, payload, headers):
            self.send_response(status)
            for name, value in headers.items():
                self.send_header(name, value)
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

    return Handler
