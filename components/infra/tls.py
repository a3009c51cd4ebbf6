"""The cluster's private CA and one server/client certificate per member (pulumi_tls).

Keys never leave Pulumi state except inside the Secrets Manager secret; the CA and member
certificates are public and go to the nodes through user-data and to clients as an output.
Certificates are renewed by ``pulumi up`` inside ``early_renewal_hours`` of expiry, which
changes user-data and therefore rolls the members one by one.
"""

import pulumi
import pulumi_tls as tls

from ..spec import ClusterSpec, certificate_ips
from ..spec.model import CA_VALIDITY_HOURS, CERT_VALIDITY_HOURS, EARLY_RENEWAL_HOURS
from .common import child


class ClusterTls(pulumi.ComponentResource):
    """CA (ECDSA P-256, self-signed) and per member a key, CSR and CA-signed certificate."""

    ca_cert_pem: pulumi.Output[str]
    cert_pems: dict[str, pulumi.Output[str]]
    key_pems: dict[str, pulumi.Output[str]]

    def __init__(self, name: str, *, spec: ClusterSpec, member_ips: dict[str, str],
                 opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__("pgha:infra:ClusterTls", name, None, opts)
        ca_key = tls.PrivateKey(f"{name}-ca-key", algorithm="ECDSA", ecdsa_curve="P256", opts=child(self))
        ca = tls.SelfSignedCert(
            f"{name}-ca", private_key_pem=ca_key.private_key_pem, is_ca_certificate=True,
            subject={"common_name": f"{spec.cluster_name} CA", "organization": "pgha"},
            validity_period_hours=CA_VALIDITY_HOURS, early_renewal_hours=EARLY_RENEWAL_HOURS,
            allowed_uses=["cert_signing", "crl_signing", "digital_signature"], opts=child(self))
        self.cert_pems = {}
        self.key_pems = {}
        for member in spec.members:
            key = tls.PrivateKey(f"{name}-{member.index}-key", algorithm="ECDSA", ecdsa_curve="P256",
                                 opts=child(self))
            csr = tls.CertRequest(
                f"{name}-{member.index}-csr", private_key_pem=key.private_key_pem,
                subject={"common_name": member.name, "organization": "pgha"},
                dns_names=spec.certificate_dns_names(member), ip_addresses=certificate_ips(member, member_ips),
                opts=child(self))
            cert = tls.LocallySignedCert(
                f"{name}-{member.index}-cert", cert_request_pem=csr.cert_request_pem,
                ca_private_key_pem=ca_key.private_key_pem, ca_cert_pem=ca.cert_pem,
                validity_period_hours=CERT_VALIDITY_HOURS, early_renewal_hours=EARLY_RENEWAL_HOURS,
                # etcd peers, Patroni and replication connect to each other with these too.
                allowed_uses=["digital_signature", "key_encipherment", "server_auth", "client_auth"],
                opts=child(self))
            self.cert_pems[member.name] = cert.cert_pem
            self.key_pems[member.name] = pulumi.Output.secret(key.private_key_pem)
        self.ca_cert_pem = ca.cert_pem
        self.register_outputs({"ca_cert_pem": ca.cert_pem})
