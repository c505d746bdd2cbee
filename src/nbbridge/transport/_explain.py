"""Turn connection failures into one sentence a user can act on.

OpenSSL says "certificate verify failed" and service-identity prints a repr; neither tells
the person at the terminal whether to fix a hostname, pass ``--ca``, renew a certificate or
start the relay. These functions look at the exception (and, when the caller has them, at the
peer's certificate and the address dialled) and say which.
"""

from __future__ import annotations

import datetime
from collections.abc import Sequence

import attrs
from cryptography import x509
from cryptography.x509.oid import NameOID
from OpenSSL import SSL
from service_identity import VerificationError
from service_identity.hazmat import DNS_ID, IPAddress_ID
from twisted.internet import error
from twisted.python.failure import Failure


class RelayConnectError(error.ConnectError):
    """A connection to the relay could not be made; ``str()`` says why, in plain words.

    A subclass of :class:`twisted.internet.error.ConnectError`, so code that treats connect
    errors generically (ClientService, retry loops) keeps working.
    """

    def __init__(self, message: str) -> None:
        super().__init__(string=message)  # type: ignore[no-untyped-call, unused-ignore]
        self.message = message

    def __str__(self) -> str:
        return self.message


class RelayCertificateError(RelayConnectError):
    """The relay's certificate was refused (untrusted, expired, or for another host).

    Unlike an outage, retrying right away will not cure it: whoever waits for the connection
    should hear at once, while a daemon may keep retrying in the background (the certificate
    may be renewed, or the clock set right).
    """


def refusal(value: BaseException, context: ConnectContext | None) -> RelayConnectError:
    """VALUE explained, as a :class:`RelayCertificateError` if it refuses the certificate."""
    if isinstance(value, RelayConnectError):
        return value
    message = describe(value, context)
    if isinstance(value, VerificationError) or (
        isinstance(value, SSL.Error) and "certificate verify failed" in openssl_reasons(value)
    ):
        return RelayCertificateError(message)
    return RelayConnectError(message)


@attrs.frozen
class ConnectContext:
    """What the caller knows about a connection attempt, to name things in messages.

    :ivar host: the host name from the relay URL (what the certificate must be valid for).
    :ivar peer: the address actually connected to, ``"IP:PORT"``, if known.
    :ivar ca_file: the ``--ca`` file in use, or None for the system CA store.
    :ivar certificate: the certificate the server presented, if any.
    """

    host: str
    port: int
    peer: str | None = None
    ca_file: str | None = None
    certificate: x509.Certificate | None = None


def explain_connect_error(failure: Failure) -> str:
    """One line saying why a connection to the relay failed or ended.

    Works on any failure: a :class:`RelayConnectError` (from :func:`client_endpoint`) already
    carries its explanation; raw Twisted, OpenSSL and service-identity errors get a generic one.
    """
    value = failure.value
    if value is None:
        return "unknown error"
    return describe(value, None)


def describe(value: BaseException, context: ConnectContext | None) -> str:
    """Explain ``value``, naming hosts and certificates from ``context`` when given."""
    if isinstance(value, RelayConnectError):
        return value.message
    if isinstance(value, VerificationError):
        return _hostname_mismatch(value, context)
    if isinstance(value, SSL.Error):
        return _tls_error(value, context)
    where = f" {context.host}:{context.port}" if context else ""
    by = f" by{where}" if context else ""
    if isinstance(value, error.ConnectionRefusedError):
        return f"connection refused{by}"
    if isinstance(value, error.DNSLookupError):
        if context:
            return f"cannot resolve host name '{context.host}'"
        return f"cannot resolve host name ({value})"
    if isinstance(value, error.TimeoutError | error.TCPTimedOutError):
        return f"connection to{where or ' the relay'} timed out"
    if isinstance(value, error.ConnectionDone):
        return "connection closed"
    if isinstance(value, error.ConnectionLost):
        return "connection lost"
    if isinstance(value, error.ConnectError):
        text = str(value).rstrip(".")
        return f"cannot connect to{where}: {text}" if context else text
    return f"{type(value).__name__}: {value}"


def _hostname_mismatch(value: VerificationError, context: ConnectContext | None) -> str:
    if context is None:
        wanted = ", ".join(_service_id_text(m.mismatched_id) for m in value.errors)
        return f"TLS: certificate is not valid for host '{wanted}'"
    source = context.peer or f"{context.host}:{context.port}"
    names = certificate_names(context.certificate) if context.certificate else []
    valid_for = f" (it is for: {', '.join(names)})" if names else ""
    return f"TLS: certificate from {source} is not valid for host '{context.host}'{valid_for}"


def _service_id_text(service_id: object) -> str:
    if isinstance(service_id, DNS_ID):
        return service_id.hostname.decode("ascii", "replace")
    if isinstance(service_id, IPAddress_ID):
        return str(service_id.ip)
    return str(service_id)


def _tls_error(value: SSL.Error, context: ConnectContext | None) -> str:
    reasons = openssl_reasons(value)
    if "certificate verify failed" in reasons:
        return _untrusted(context)
    where = f" with {context.host}:{context.port}" if context else ""
    text = "; ".join(reasons) or repr(value)
    hint = ""
    if any(r in _NOT_TLS for r in reasons):
        hint = " (is that port serving TLS? use ws:// for a plain relay on loopback)"
    return f"TLS handshake{where} failed: {text}{hint}"


_NOT_TLS = {"wrong version number", "packet length too long", "record layer failure"}


def _untrusted(context: ConnectContext | None) -> str:
    if context is None:
        return "TLS: certificate not signed by a trusted CA (use --ca FILE?)"
    cert = context.certificate
    subject = f"certificate of {context.host}"
    if cert is not None:
        now = datetime.datetime.now(datetime.UTC)
        if cert.not_valid_after_utc < now:
            return f"TLS: {subject} expired on {cert.not_valid_after_utc:%Y-%m-%d %H:%M} UTC"
        if cert.not_valid_before_utc > now:
            return (
                f"TLS: {subject} is not valid before "
                f"{cert.not_valid_before_utc:%Y-%m-%d %H:%M} UTC (check the clocks)"
            )
        subject += f" (issued by {_name_text(cert.issuer)})"
    if context.ca_file is not None:
        return f"TLS: {subject} is not signed by a CA in {context.ca_file}"
    return f"TLS: {subject} is not signed by a trusted CA (use --ca FILE?)"


def openssl_reasons(value: SSL.Error) -> list[str]:
    """The reason strings in a pyOpenSSL error (``[(lib, func, reason), ...]``)."""
    found: list[str] = []
    args = value.args[0] if value.args else []
    if isinstance(args, Sequence) and not isinstance(args, str):
        for item in args:
            if isinstance(item, Sequence) and not isinstance(item, str) and len(item) >= 3:
                found.append(str(item[2]))
    return found


def certificate_names(cert: x509.Certificate) -> list[str]:
    """Names a certificate is valid for: its subjectAltName entries, else its common name."""
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return [str(a.value) for a in cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)]
    names: list[str] = list(san.get_values_for_type(x509.DNSName))
    names += [str(ip) for ip in san.get_values_for_type(x509.IPAddress)]
    return names


def _name_text(name: x509.Name) -> str:
    common = name.get_attributes_for_oid(NameOID.COMMON_NAME)
    if common:
        return f"'{common[0].value!s}'"
    return f"'{name.rfc4514_string()}'"
