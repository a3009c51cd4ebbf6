#!/usr/bin/env bash
# Set up a Debian 12 machine for pgha: the daemons the loopback cluster runs (Debian's
# packages, the same versions EC2 nodes pin) and ./venv with pgha and its test tools.
# Safe to re-run. Needs root or sudo for the packages.
set -euo pipefail
cd "$(dirname "$0")/.."

SUDO=""
[ "$(id -u)" = 0 ] || SUDO=sudo
PACKAGES=(postgresql-15 etcd-server etcd-client pgbouncer haproxy pgbackrest prometheus-node-exporter
          prometheus-postgres-exporter python3-venv iproute2 procps openssl curl
          xfsprogs e2fsprogs util-linux systemd systemd-container debootstrap)

# Debian's postgresql-common would otherwise create and start a default cluster on 5432.
$SUDO mkdir -p /etc/postgresql-common
echo "create_main_cluster = false" | $SUDO tee /etc/postgresql-common/createcluster.conf >/dev/null

missing=()
for package in "${PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "install ok installed" || missing+=("$package")
done
if [ "${#missing[@]}" -gt 0 ]; then
    echo "setup: installing ${missing[*]}"
    $SUDO apt-get update -q
    $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}"
fi
# On a systemd machine the packages start their own services with default configs; pgha runs its own.
if [ -d /run/systemd/system ]; then
    $SUDO systemctl disable --now etcd pgbouncer haproxy prometheus-node-exporter \
        prometheus-postgres-exporter postgresql >/dev/null 2>&1 || true
fi

PYTHON=${PYTHON:-python3}
if [ ! -x venv/bin/python ]; then
    "$PYTHON" -m venv venv
fi
venv/bin/python -m pip install -q --disable-pip-version-check -c constraints.txt -e ".[test]"
echo "setup: done (venv/bin/pgha, venv/bin/python -m pytest)"
