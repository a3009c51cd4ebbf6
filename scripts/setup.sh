#!/usr/bin/env bash
# Set up a Debian machine for pgha: what boots the local members (systemd-nspawn, debootstrap for
# the Debian 13 node image, built on first use by `pgha local up` or `pgha image build`), the
# host-side stand-ins (HAProxy as moto's TLS terminator), and ./venv with pgha and its test tools.
# The node agent's own tests still run a throwaway PostgreSQL, PgBouncer and pgBackRest from this
# machine's packages. Safe to re-run. Needs root or sudo for the packages.
set -euo pipefail
cd "$(dirname "$0")/.."

SUDO=""
[ "$(id -u)" = 0 ] || SUDO=sudo
PACKAGES=(systemd-container debootstrap haproxy iproute2 util-linux procps openssl curl xfsprogs e2fsprogs
          python3-venv
          # the node agent's tests (a throwaway database stack; the etcd and postgres OS users)
          postgresql-15 pgbouncer pgbackrest etcd-server
          # promtool: the generated alert rules checked and unit-tested (tests/test_alerts.py)
          prometheus)

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
# On a systemd machine the packages start their own services with default configs; pgha needs none.
if [ -d /run/systemd/system ]; then
    $SUDO systemctl disable --now etcd pgbouncer haproxy postgresql prometheus >/dev/null 2>&1 || true
fi

PYTHON=${PYTHON:-python3}
if [ ! -x venv/bin/python ]; then
    "$PYTHON" -m venv venv
fi
venv/bin/python -m pip install -q --disable-pip-version-check -c constraints.txt -e ".[test]"
echo "setup: done (venv/bin/pgha, venv/bin/python -m pytest)"
