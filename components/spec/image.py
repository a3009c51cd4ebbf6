"""The node image: one Debian release and the packages every member runs, from Debian alone.

EC2 members boot Debian's official AMI of this release and install exactly these packages
at first boot (``pgha-bootstrap``); the local rehearsal builds a root filesystem of the same
release with the same packages (``pgha image build``). Nothing comes from PGDG or PyPI, so
the bits proven here are the bits EC2 runs.

Each package is pinned to the upstream version the rehearsal proved (an apt preference on
``<version>*``): Debian's security and point updates of that version pass, a new upstream
version does not until it is proven and the pin raised here.
"""

from typing import Mapping

DEBIAN_MAJOR = 13
DEBIAN_CODENAME = "trixie"
# Debian's archive and its security archive; the same on EC2 (the AMI's sources) and here.
DEBIAN_SUITES: tuple[str, ...] = (DEBIAN_CODENAME, f"{DEBIAN_CODENAME}-updates")
DEBIAN_SECURITY_SUITE = f"{DEBIAN_CODENAME}-security"

# The PostgreSQL majors Debian 13 provides. pgBackRest 2.55 reads 17; Debian 12's 2.45 could not.
POSTGRES_MAJORS: tuple[int, ...] = (17,)

# Package -> the version prefix (epoch and upstream) the rehearsal proved (2026-12-01, Debian 13).
DAEMON_PACKAGES: Mapping[str, str] = {
    "postgresql-17": "17.",
    "postgresql-client-17": "17.",
    "pgbackrest": "2.55",
    "patroni": "4.0.",
    # Patroni's etcd3 module imports python-etcd's exceptions.
    "python3-etcd": "0.4.",
    "etcd-server": "3.5.",
    "etcd-client": "3.5.",
    "pgbouncer": "1.24.",
    "haproxy": "3.0.",
    "prometheus-node-exporter": "1.9.",
    "prometheus-postgres-exporter": "0.17.",
    "prometheus-pgbouncer-exporter": "1:0.10.",
}
# The node agent's libraries (pgha-node runs on Debian's python3) and the boot tools; unpinned:
# they follow Debian 13 and its security updates.
SUPPORT_PACKAGES: tuple[str, ...] = (
    "python3", "python3-boto3", "python3-psycopg", "python3-prometheus-client", "python3-yaml",
    # EC2 Instance Connect's key checks (pgha-node authorized-keys) and the sshd they serve.
    "python3-cryptography", "openssh-server",
    "ca-certificates", "mdadm", "xfsprogs", "e2fsprogs", "nvme-cli", "logrotate", "procps", "iproute2",
    # nft: the filter that keeps IMDS (the instance role's credentials) to the users that call AWS.
    "nftables",
)
NODE_PACKAGES: tuple[str, ...] = (*DAEMON_PACKAGES, *SUPPORT_PACKAGES)

# Services the packages enable with their default configs; pgha runs its own units instead.
PACKAGED_SERVICES: tuple[str, ...] = (
    "postgresql", "patroni", "etcd", "pgbouncer", "haproxy", "prometheus-node-exporter",
    "prometheus-postgres-exporter", "prometheus-pgbouncer-exporter",
)


def postgres_packages(major: int) -> tuple[str, ...]:
    """The server and client packages of a PostgreSQL major."""
    return (f"postgresql-{major}", f"postgresql-client-{major}")
