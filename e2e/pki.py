"""Certificates, keys and kubeconfigs for the local control plane (no openssl needed).

One CA signs the API server's serving certificate and every client certificate; users are
identified by CN (user) and O (groups), as kube-apiserver's x509 authenticator reads them.
"""

from __future__ import annotations

import base64
import datetime
import ipaddress
from dataclasses import dataclass
from pathlib import Path

import yaml
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

_VALIDITY = datetime.timedelta(days=30)

# (file stem, CN, O): the controller-manager and scheduler names are bound by bootstrap RBAC.
CLIENTS: tuple[tuple[str, str, str | None], ...] = (
    ("admin", "kubernetes-admin", "system:masters"),
    ("kube-controller-manager", "system:kube-controller-manager", None),
    ("kube-scheduler", "system:kube-scheduler", None),
    # The API server's identity towards kubelets (pods/log proxying).
    ("apiserver-kubelet-client", "kube-apiserver-kubelet-client", "system:masters"),
)


@dataclass(frozen=True)
class Pki:
    """Paths of the generated material."""

    dir: Path

    @property
    def ca_crt(self) -> Path:
        return self.dir / "ca.crt"

    @property
    def ca_key(self) -> Path:
        return self.dir / "ca.key"

    @property
    def apiserver_crt(self) -> Path:
        return self.dir / "apiserver.crt"

    @property
    def apiserver_key(self) -> Path:
        return self.dir / "apiserver.key"

    @property
    def sa_key(self) -> Path:
        return self.dir / "sa.key"

    @property
    def sa_pub(self) -> Path:
        return self.dir / "sa.pub"

    def client_crt(self, name: str) -> Path:
        return self.dir / f"{name}.crt"

    def client_key(self, name: str) -> Path:
        return self.dir / f"{name}.key"

    def kubeconfig(self, name: str) -> Path:
        return self.dir / f"{name}.kubeconfig"


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


def _key_pem(key: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _write(path: Path, data: bytes, private: bool = False) -> None:
    path.write_bytes(data)
    if private:
        path.chmod(0o600)


def _issue(
    ca_cert: x509.Certificate,
    ca_key: ec.EllipticCurvePrivateKey,
    subject: x509.Name,
    usage: x509.ObjectIdentifier,
    sans: list[x509.GeneralName] | None = None,
) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    key = ec.generate_private_key(ec.SECP256R1())
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(_now() - datetime.timedelta(minutes=5))
        .not_valid_after(_now() + _VALIDITY)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=True,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
    )
    if sans:
        builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
    return builder.sign(ca_key, hashes.SHA256()), key


def generate(
    pki_dir: Path,
    api_url: str,
    server_ips: list[str],
    service_ip: str,
    cluster_name: str,
    node_names: tuple[str, ...] = (),
) -> Pki:
    """Writes a fresh CA, serving cert, client certs (one per real node among them), SA key pair
    and kubeconfigs into pki_dir."""
    pki_dir.mkdir(parents=True, exist_ok=True)
    pki = Pki(pki_dir)
    ca_cert, ca_key = _write_ca(pki, cluster_name)
    _write_serving_cert(pki, ca_cert, ca_key, [*server_ips, "127.0.0.1", service_ip])
    _write_sa_keys(pki)
    clients = [*CLIENTS, *(node_client(name) for name in node_names)]
    for stem, cn, org in clients:
        _write_client(pki, ca_cert, ca_key, stem, cn, org)
        write_kubeconfig(pki.kubeconfig(stem), pki, stem, api_url, cluster_name)
    return pki


def node_client(name: str) -> tuple[str, str, str]:
    """A kubelet's identity: the Node authorizer and NodeRestriction key on this name and group."""
    return (f"node-{name}", f"system:node:{name}", "system:nodes")


def _write_ca(pki: Pki, cluster_name: str) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"shoal-e2e-ca-{cluster_name}")])
    ca_cert = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(_now() - datetime.timedelta(minutes=5))
        .not_valid_after(_now() + _VALIDITY)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), False)
        .sign(ca_key, hashes.SHA256())
    )
    _write(pki.ca_crt, ca_cert.public_bytes(serialization.Encoding.PEM))
    _write(pki.ca_key, _key_pem(ca_key), private=True)
    return ca_cert, ca_key


def _write_serving_cert(
    pki: Pki, ca_cert: x509.Certificate, ca_key: ec.EllipticCurvePrivateKey, ips: list[str]
) -> None:
    dns = [
        "localhost",
        "kubernetes",
        "kubernetes.default",
        "kubernetes.default.svc",
        "kubernetes.default.svc.cluster.local",
    ]
    sans: list[x509.GeneralName] = [x509.DNSName(d) for d in dns]
    sans += [x509.IPAddress(ipaddress.ip_address(ip)) for ip in dict.fromkeys(ips)]
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "kube-apiserver")])
    cert, key = _issue(ca_cert, ca_key, subject, ExtendedKeyUsageOID.SERVER_AUTH, sans)
    _write(pki.apiserver_crt, cert.public_bytes(serialization.Encoding.PEM))
    _write(pki.apiserver_key, _key_pem(key), private=True)


def _write_sa_keys(pki: Pki) -> None:
    # RSA: the service account signer must support RS256 for every client library.
    sa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    _write(pki.sa_key, _key_pem(sa_key), private=True)
    _write(
        pki.sa_pub,
        sa_key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        ),
    )


def _write_client(
    pki: Pki,
    ca_cert: x509.Certificate,
    ca_key: ec.EllipticCurvePrivateKey,
    stem: str,
    cn: str,
    org: str | None,
) -> None:
    attrs = [x509.NameAttribute(NameOID.COMMON_NAME, cn)]
    if org:
        attrs.insert(0, x509.NameAttribute(NameOID.ORGANIZATION_NAME, org))
    cert, key = _issue(ca_cert, ca_key, x509.Name(attrs), ExtendedKeyUsageOID.CLIENT_AUTH)
    _write(pki.client_crt(stem), cert.public_bytes(serialization.Encoding.PEM))
    _write(pki.client_key(stem), _key_pem(key), private=True)


def write_kubeconfig(path: Path, pki: Pki, user: str, api_url: str, cluster_name: str) -> None:
    def b64(p: Path) -> str:
        return base64.b64encode(p.read_bytes()).decode()

    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [
            {
                "name": cluster_name,
                "cluster": {"server": api_url, "certificate-authority-data": b64(pki.ca_crt)},
            }
        ],
        "users": [
            {
                "name": user,
                "user": {
                    "client-certificate-data": b64(pki.client_crt(user)),
                    "client-key-data": b64(pki.client_key(user)),
                },
            }
        ],
        "contexts": [{"name": cluster_name, "context": {"cluster": cluster_name, "user": user}}],
        "current-context": cluster_name,
        "preferences": {},
    }
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    path.chmod(0o600)
