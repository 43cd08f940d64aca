"""Make a throw-away test PKI for the ETSI 014 key managers: a CA, KME server certs and SAE client certs.

    python tools/make_test_ca.py OUTDIR [--kme kme-aau --kme kme-du] [--sae sae-aau --sae sae-du] [--days 30]

Writes ``ca.pem`` / ``ca.key`` and, for every name N, ``N.pem`` + ``N.key`` (PEM, unencrypted keys, mode 0600).
KME certificates carry serverAuth and subjectAltNames localhost / 127.0.0.1 / ::1; SAE certificates carry
clientAuth with subject CN = the SAE id (the KME identifies SAEs by CN).  ECDSA P-256 keys, SHA-256.
For tests only: nothing here is fit for a production PKI.
"""
from __future__ import annotations

import argparse
import datetime as dt
import ipaddress
import os
import sys

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID


def _write(path: str, data: bytes, private: bool = False) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600 if private else 0o644)
    with os.fdopen(fd, "wb") as f:
        f.write(data)


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def make_ca(outdir: str, cn: str = "qkdflow test CA", days: int = 30) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    """Self-signed CA; writes ca.pem and ca.key into ``outdir``."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])
    now = dt.datetime.now(dt.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=days))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                         content_commitment=False, key_encipherment=False, data_encipherment=False,
                                         key_agreement=False, encipher_only=False, decipher_only=False), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
            .sign(key, hashes.SHA256()))
    os.makedirs(outdir, exist_ok=True)
    _write(os.path.join(outdir, "ca.pem"), cert.public_bytes(serialization.Encoding.PEM))
    _write(os.path.join(outdir, "ca.key"), _key_pem(key), private=True)
    return cert, key


def issue(outdir: str, name: str, ca_cert: x509.Certificate, ca_key: ec.EllipticCurvePrivateKey, *,
          server: bool, days: int = 30) -> tuple[str, str]:
    """Issue a server (KME) or client (SAE) certificate with CN = ``name``; returns (cert path, key path)."""
    if not name or "/" in name or name.startswith("."):
        raise ValueError(f"name {name!r}: must be a plain file-name-safe identifier")
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.timezone.utc)
    b = (x509.CertificateBuilder().subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
         .issuer_name(ca_cert.subject).public_key(key.public_key()).serial_number(x509.random_serial_number())
         .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + dt.timedelta(days=days))
         .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
         .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH if server
                                               else ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
         .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False))
    if server:
        b = b.add_extension(x509.SubjectAlternativeName([
            x509.DNSName("localhost"), x509.DNSName(name),
            x509.IPAddress(ipaddress.ip_address("127.0.0.1")), x509.IPAddress(ipaddress.ip_address("::1"))]),
            critical=False)
    cert = b.sign(ca_key, hashes.SHA256())
    cpath, kpath = os.path.join(outdir, f"{name}.pem"), os.path.join(outdir, f"{name}.key")
    _write(cpath, cert.public_bytes(serialization.Encoding.PEM))
    _write(kpath, _key_pem(key), private=True)
    return cpath, kpath


def make_test_pki(outdir: str, kmes: list[str], saes: list[str], days: int = 30, ca_cn: str = "qkdflow test CA") -> dict:
    """CA + certificates; returns {"ca": path, name: (cert, key), ...}."""
    if days < 1:
        raise ValueError(f"days must be >= 1, got {days}")
    ca_cert, ca_key = make_ca(outdir, ca_cn, days)
    out: dict = {"ca": os.path.join(outdir, "ca.pem")}
    for n in kmes:
        out[n] = issue(outdir, n, ca_cert, ca_key, server=True, days=days)
    for n in saes:
        out[n] = issue(outdir, n, ca_cert, ca_key, server=False, days=days)
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("outdir")
    ap.add_argument("--kme", action="append", help="KME server name (default kme-aau, kme-du)")
    ap.add_argument("--sae", action="append", help="SAE client name (default sae-aau, sae-du)")
    ap.add_argument("--days", type=int, default=30)
    a = ap.parse_args(argv)
    try:
        paths = make_test_pki(a.outdir, a.kme or ["kme-aau", "kme-du"], a.sae or ["sae-aau", "sae-du"], a.days)
    except ValueError as e:
        print(f"make_test_ca: {e}", file=sys.stderr)
        return 2
    for k, v in paths.items():
        print(f"{k}: {v if isinstance(v, str) else ' '.join(v)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
