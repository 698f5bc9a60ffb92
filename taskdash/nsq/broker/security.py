"""The broker's TLS context, built from nsqd's --tls-* flags; one line for any unusable file."""

from __future__ import annotations

import ssl

from taskdash.nsq.broker.options import SecurityOptions, TLSRequired
from taskdash.nsq.tls import no_password, reason

_VERSIONS = {
    "tls1.0": ssl.TLSVersion.TLSv1,
    "tls1.1": ssl.TLSVersion.TLSv1_1,
    "tls1.2": ssl.TLSVersion.TLSv1_2,
    "tls1.3": ssl.TLSVersion.TLSv1_3,
}


class TLSConfigError(ValueError):
    """A certificate, key or CA file that cannot be used; the message names the flag."""


def server_context(options: SecurityOptions) -> ssl.SSLContext | None:
    """nsqd's buildTLSConfig: None without a certificate, else the server-side context.

    Client certificates: none asked for by default; ``require`` and ``require-verify`` both
    ask for one and verify it against --tls-root-ca-file (else the system's CAs). nsqd's
    ``require`` accepts any certificate unverified, which Python's ssl module cannot do: here
    it is as strict as ``require-verify`` (see docs/nsq-security.md).
    """
    if not options.tls_enabled:
        return None
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    try:
        context.load_cert_chain(options.tls_cert, options.tls_key, password=no_password)
    except (OSError, ssl.SSLError) as exc:
        raise TLSConfigError(
            f"--tls-cert/--tls-key: cannot load {options.tls_cert} with {options.tls_key}: "
            f"{reason(exc)}"
        ) from None
    if options.tls_min_version:
        context.minimum_version = _VERSIONS[options.tls_min_version]
    if options.tls_client_auth_policy:
        context.verify_mode = ssl.CERT_REQUIRED
        if options.tls_root_ca_file:
            try:
                context.load_verify_locations(cafile=options.tls_root_ca_file)
            except (OSError, ssl.SSLError) as exc:
                raise TLSConfigError(
                    f"--tls-root-ca-file: cannot load {options.tls_root_ca_file}: {reason(exc)}"
                ) from None
        else:
            context.load_default_certs(ssl.Purpose.CLIENT_AUTH)
    return context


def peer_common_name(ssl_object: ssl.SSLObject | ssl.SSLSocket | None) -> str:
    """The client certificate's subject CN (what nsqd sends the auth server), else ''."""
    if ssl_object is None:
        return ""
    cert = ssl_object.getpeercert()
    for rdn in (cert or {}).get("subject", ()):
        for key, value in rdn:
            if key == "commonName":
                return str(value)
    return ""


class Security:
    """What one broker offers beyond plain TCP, built once from its SecurityOptions.

    Raises ValueError (one line naming the flag) for files that cannot be used and for
    ``--snappy`` without the snappy library.
    """

    def __init__(self, options: SecurityOptions | None = None) -> None:
        from taskdash.nsq.broker.authz import AuthClient
        from taskdash.nsq.broker.wire import snappy_available

        self.options = options = options or SecurityOptions()
        self.tls_context = server_context(options)
        if options.snappy and not snappy_available():
            raise ValueError(
                "--snappy needs the snappy library: pip install 'taskdash[snappy]' (python-snappy)"
            )
        self.snappy = snappy_available() if options.snappy is None else options.snappy
        self.auth = (
            AuthClient(
                options.auth_http_addresses,
                connect_timeout=options.http_client_connect_timeout,
                request_timeout=options.http_client_request_timeout,
                ca_file=options.tls_root_ca_file,
            )
            if options.auth_enabled
            else None
        )

    @property
    def tcp_tls_required(self) -> bool:
        """Every TCP command but IDENTIFY needs TLS first (true and tcp-https alike)."""
        return self.options.effective_tls_required != TLSRequired.NOT_REQUIRED

    @property
    def http_tls_required(self) -> bool:
        """Plain HTTP answers 403 TLS_REQUIRED (--tls-required=true, not tcp-https)."""
        return self.options.effective_tls_required == TLSRequired.REQUIRED
