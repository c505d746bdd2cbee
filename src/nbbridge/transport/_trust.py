"""Which CAs to trust for ``wss://``: the ``--ca`` file, the system's store, or certifi's bundle.

Twisted's ``platformTrust()`` asks OpenSSL for its default CA locations. The OpenSSL inside
the cryptography wheels looks where it was built (``/opt/pyca/...``), and pyOpenSSL then tries
the usual Linux and BSD files; a stock Mac has neither, so the system store would trust
nothing and every publicly signed relay would be refused (pyOpenSSL documents this). When the
system store turns out to hold no CA, nbbridge trusts the bundle of the ``certifi`` package
instead (Mozilla's list; pip and requests ship it for the same reason) and says so in the log.
"""

from __future__ import annotations

import functools
import warnings
from typing import TYPE_CHECKING

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.utils import CryptographyDeprecationWarning
from OpenSSL import SSL, crypto
from twisted.internet.ssl import Certificate, platformTrust, trustRootFromCertificates
from twisted.logger import Logger

from nbbridge._internals import add_trust_root_to_context

if TYPE_CHECKING:
    from nbbridge._internals import IOpenSSLTrustRoot

_log = Logger()


def load_trust_root(ca_file: str | None) -> IOpenSSLTrustRoot:
    """The CAs to trust: only the certificates in a PEM file (``--ca``), else the default.

    :raises ValueError: the file cannot be read or holds no PEM certificate; the daemons call
        this at start-up so a typo in ``--ca`` is refused once, clearly, rather than as failed
        handshakes.
    """
    if ca_file is None:
        return default_trust_root()
    try:
        return trust_root_from_pem(_read(ca_file))
    except OSError as e:
        raise ValueError(f"--ca {ca_file}: cannot read it: {e.strerror}") from None
    except ValueError:
        raise ValueError(f"--ca {ca_file}: no PEM certificate found in it") from None


@functools.cache
def default_trust_root() -> IOpenSSLTrustRoot:
    """The system's CA store, or certifi's bundle where the system store holds none.

    Decided once per process: the probe verifies up to every root of the bundle.
    """
    import certifi

    return choose_trust_root(platformTrust(), certifi.where())  # type: ignore[no-untyped-call, unused-ignore]


def choose_trust_root(platform: IOpenSSLTrustRoot, bundle_file: str) -> IOpenSSLTrustRoot:
    """PLATFORM if it trusts any root of the PEM file BUNDLE_FILE, else that bundle.

    A store that trusts none of Mozilla's roots is as good as empty: it would refuse every
    public certificate. Probing by verifying the roots themselves works for stores OpenSSL
    reads lazily (a hashed directory) as well as for files.
    """
    with warnings.catch_warnings():
        # certifi carries a few old roots with serial numbers that RFC 5280 disallows.
        warnings.simplefilter("ignore", CryptographyDeprecationWarning)
        bundle = x509.load_pem_x509_certificates(_read(bundle_file))
    if _trusts_any(platform, bundle):
        return platform
    _log.info(
        "the system CA store is empty to OpenSSL; trusting the CAs in {bundle} (certifi)",
        bundle=bundle_file,
    )
    return _trust_root(bundle)


def trust_root_from_pem(data: bytes) -> IOpenSSLTrustRoot:
    """A trust root of every certificate in DATA (PEM); ValueError if there is none."""
    return _trust_root(x509.load_pem_x509_certificates(data))


def _trusts_any(root: IOpenSSLTrustRoot, candidates: list[x509.Certificate]) -> bool:
    context = SSL.Context(SSL.TLS_CLIENT_METHOD)
    add_trust_root_to_context(root, context)
    store = context.get_cert_store()
    if store is None:
        return False
    for cert in candidates:
        try:
            crypto.X509StoreContext(store, crypto.X509.from_cryptography(cert)).verify_certificate()
        except crypto.X509StoreContextError:
            continue
        return True
    return False


def _trust_root(certs: list[x509.Certificate]) -> IOpenSSLTrustRoot:
    roots = [Certificate.loadPEM(c.public_bytes(Encoding.PEM)) for c in certs]
    return trustRootFromCertificates(roots)  # type: ignore[no-untyped-call, unused-ignore, no-any-return]


def _read(path: str) -> bytes:
    with open(path, "rb") as f:
        return f.read()
