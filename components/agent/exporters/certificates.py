"""The node's TLS certificates' expiry, served by the pgBackRest exporter (pgha's own, on every
member): ``pulumi up`` renews them, and nothing else on the node tells monitoring when it did not."""

import os

from ..errors import LOG
from .common import Families

# The cluster CA and the member's certificate (etcd, PostgreSQL, Patroni, pgBackRest's server).
CERTIFICATE_FILES: tuple[str, ...] = ("ca.crt", "node.crt")


def certificate_families(tls_dir: str) -> list:
    """``pgha_tls_certificate_expiry_timestamp_seconds{file}``: the earliest notAfter in each file.

    A file that is missing or holds no certificate yields no sample (and a log line): the alert
    on targets that stop serving it is PgTargetDown's, not a made-up date."""
    from cryptography import x509

    f = Families()
    for name in CERTIFICATE_FILES:
        path = os.path.join(tls_dir, name)
        try:
            with open(path, "rb") as fh:
                certs = x509.load_pem_x509_certificates(fh.read())
        except (OSError, ValueError) as exc:
            LOG.warning("cannot read certificate %s: %s", path, exc)
            continue
        f.add("pgha_tls_certificate_expiry_timestamp_seconds", "gauge",
              "Unix time the certificate (the earliest of the file's chain) expires", {"file": name},
              min(c.not_valid_after_utc.timestamp() for c in certs))
    return f.list()
