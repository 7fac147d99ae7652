"""A customer's own CA certificate (MailAccount.tls_ca_pem): certificates only, never a private key.

Users paste it into the Exchange form and staff edit it in the admin. A .pem
file exported from a server often holds the server's private key as well; a
key must never be stored (the field is plain text, shown to staff, and copied
to every migration's connection). So every writer of the field goes through
certificates_only(): a text with a private key is refused with a reason, and
what is stored is only the certificates, re-encoded from their parsed form,
so nothing else in the pasted text (comments, parameters, stray data) survives.
"""

import re

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding
from django.utils.translation import gettext_lazy as _

MAX_PEM_CHARS = 64 * 1024  # a few certificates; more is not a CA bundle a mail server needs

# Any PEM label that names a private key (RFC 7468 "PRIVATE KEY", "ENCRYPTED PRIVATE KEY";
# OpenSSL's "RSA/EC/DSA PRIVATE KEY"; OpenSSH's "OPENSSH PRIVATE KEY"), also with a broken end line.
_PRIVATE_KEY = re.compile(r"-----BEGIN[A-Z0-9 ]*PRIVATE KEY-----", re.IGNORECASE)


MESSAGES = {
    "private_key": _("Der eingefügte Text enthält einen privaten Schlüssel. Fügen Sie nur das Zertifikat ein "
                     "(-----BEGIN CERTIFICATE----- …): der private Schlüssel bleibt auf dem Server und wird hier "
                     "weder gebraucht noch gespeichert."),
    "no_certificate": _("Das ist kein Zertifikat im PEM-Format (-----BEGIN CERTIFICATE----- …)."),
    "too_long": _("Das sind zu viele Zertifikate: höchstens 64 KB."),
}


class NotCertificates(ValueError):
    """The text is no certificate to store. reason: "private_key" | "no_certificate" | "too_long";
    message: what to tell the person who entered it (translated)."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason
        self.message = MESSAGES[reason]


def certificates_only(text: str) -> str:
    """PEM text -> the X.509 certificates in it as PEM, one after another ("" for an empty text).

    Raises NotCertificates("private_key") when the text holds a private key (it is then
    stored nowhere), NotCertificates("no_certificate") when it holds no readable
    certificate (RFC 7468 "CERTIFICATE" blocks), NotCertificates("too_long") past MAX_PEM_CHARS.
    """
    text = (text or "").strip()
    if not text:
        return ""
    if _PRIVATE_KEY.search(text):
        raise NotCertificates("private_key")
    if len(text) > MAX_PEM_CHARS:
        raise NotCertificates("too_long")
    try:
        certificates = x509.load_pem_x509_certificates(text.encode("utf-8", "replace"))
    except ValueError:
        raise NotCertificates("no_certificate") from None
    return "".join(certificate.public_bytes(Encoding.PEM).decode("ascii") for certificate in certificates)
