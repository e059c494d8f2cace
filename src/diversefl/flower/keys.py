"""Key material of a local deployment: the SuperLink's TLS files and the SuperNodes' key pairs.

A node's private key is written as a new file of mode 0600 (never rewritten in place, so a key
file that existed with mode 0644, or another user's file, does not keep its permissions or
owner), and never through a symbolic link: a link at the key path is refused with an error.
"""

from __future__ import annotations

import os
import ssl
from dataclasses import dataclass
from pathlib import Path

from diversefl.flower.workdir import refuse_link, write_file


@dataclass(frozen=True)
class TlsFiles:
    """PEM files for a TLS SuperLink: the CA certificate that nodes and the CLI trust, and the
    server's certificate (with a SAN for the address the nodes dial) and private key."""

    ca: Path
    cert: Path
    key: Path

    @classmethod
    def parse(cls, spec: str) -> TlsFiles:
        """``CA,CERT,KEY`` (three paths), or a directory holding ``ca.crt``, ``server.pem``
        and ``server.key``."""
        parts = [Path(p).expanduser().resolve() for p in spec.split(",")]
        if len(parts) == 1:
            d = parts[0]
            parts = [d / "ca.crt", d / "server.pem", d / "server.key"]
        if len(parts) != 3:
            raise ValueError(f"certificates {spec!r}: expected CA,CERT,KEY or a directory")
        missing = [str(p) for p in parts if not p.is_file()]
        if missing:
            raise ValueError(f"certificate files not found: {', '.join(missing)}")
        return cls(*parts)

    def context(self) -> ssl.SSLContext:
        """A client SSL context that trusts only ``ca`` (to check the SuperLink)."""
        return ssl.create_default_context(cafile=str(self.ca))

    def superlink_args(self) -> list[str]:
        """The ``flower-superlink`` options that turn TLS on."""
        return [
            "--ssl-ca-certfile",
            str(self.ca),
            "--ssl-certfile",
            str(self.cert),
            "--ssl-keyfile",
            str(self.key),
        ]


def make_node_key(path: str | os.PathLike[str]) -> tuple[Path, Path]:
    """Write a new SuperNode key pair (EC P-384, OpenSSH format, as ``ssh-keygen -t ecdsa -b
    384`` makes): the private key at ``path`` (a new file of mode 0600), the public key at
    ``path.pub`` (0644). A symbolic link at either path is refused
    (:class:`~diversefl.flower.workdir.UnsafePathError`); an existing file is replaced."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    key = ec.generate_private_key(ec.SECP384R1())
    private = Path(path)
    public = private.with_name(private.name + ".pub")
    private.parent.mkdir(parents=True, exist_ok=True)
    refuse_link(private, "a private key")  # both checked before either is written
    refuse_link(public, "a public key")
    secret = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.OpenSSH,
        serialization.NoEncryption(),
    )
    shared = key.public_key().public_bytes(
        serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH
    )
    write_file(private, secret, 0o600, what="a private key")
    write_file(public, shared + b"\n", 0o644, what="a public key")
    return private, public
