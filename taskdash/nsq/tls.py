"""The daemon's TLS toward nsqd (TCP, through pynsq) and its HTTPS /mpub: one context for both."""

from __future__ import annotations

import ssl


def client_context(
    *, ca_file: str = "", cert_file: str = "", key_file: str = "", verify: bool = True
) -> ssl.SSLContext:
    """What the daemon checks of nsqd, and the certificate it shows when asked for one.

    ``verify`` on: nsqd's certificate must chain to ``ca_file`` (else the system's CAs) and
    name the host connected to. Off: the name is not checked, and the chain only when a
    ``ca_file`` is given (without one nothing is checked: encryption without authentication).
    Raises ValueError naming the ``[nsq]`` key of a file that cannot be used.
    """
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH)
    if not verify:
        context.check_hostname = False
        if not ca_file:
            context.verify_mode = ssl.CERT_NONE
    if ca_file:
        try:
            context.load_verify_locations(cafile=ca_file)
        except (OSError, ssl.SSLError) as exc:
            raise ValueError(f"tls_ca_file cannot be used: {ca_file}: {reason(exc)}") from None
    if cert_file:
        try:
            context.load_cert_chain(cert_file, key_file or None, password=no_password)
        except (OSError, ssl.SSLError) as exc:
            raise ValueError(
                f"tls_cert_file cannot be used with tls_key_file: {cert_file}, "
                f"{key_file or '(no key file)'}: {reason(exc)}"
            ) from None
    return context


def no_password() -> bytes:
    """An encrypted key fails to load instead of prompting on the terminal."""
    return b""


def reason(exc: BaseException) -> str:
    """The readable part of an OSError/SSLError."""
    if isinstance(exc, OSError) and exc.strerror:
        return str(exc.strerror)
    return str(getattr(exc, "reason", None) or exc)
