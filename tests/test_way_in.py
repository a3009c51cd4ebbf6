"""The way in: an operator's shell on a member through EC2 Instance Connect, on a real sshd.

What AWS does is played by the rehearsal (pgha.local.eic: the signed key in the member's
metadata for 60 s); what the node does is the node's own: Debian's sshd with pgha's drop-in,
`pgha-node authorized-keys` as its AuthorizedKeysCommand, the host keys cloud-init made for
this instance. EICE's tunnel and IAM's evaluation are AWS's and not here (README).
"""

import re
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from pgha import contract
from pgha.agent import authorized_keys as ak
from pgha.local import eic, netns

pytestmark = pytest.mark.cluster

USER = contract.SSH_LOGIN_USER


def new_key(tmp_path: Path, name: str) -> tuple[Path, str]:
    key = tmp_path / name
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", name, "-f", str(key)], check=True)
    return key, (tmp_path / f"{name}.pub").read_text().strip()


def ssh(ip: str, key: Path | None, known_hosts: Path, *command: str, user: str = USER,
        options: tuple[str, ...] = (), source: str | None = None) -> subprocess.CompletedProcess:
    argv = ["ssh", "-F", "none", "-o", "BatchMode=yes", "-o", "ConnectTimeout=15", "-o", "IdentitiesOnly=yes",
            "-o", f"UserKnownHostsFile={known_hosts}", "-o", "StrictHostKeyChecking=yes", *options]
    if source is not None:
        argv += ["-b", source]
    if key is not None:
        argv += ["-i", str(key)]
    return subprocess.run([*argv, f"{user}@{ip}", *command], capture_output=True, text=True, timeout=60)


@pytest.fixture
def sources(local_cluster) -> Iterator[Iterator[str]]:
    """Fresh client addresses on the host's side of the bridge, one per refused attempt.

    OpenSSH (9.8 on) penalises a source address that keeps failing to authenticate
    (PerSourcePenalties: authfail 5 s each, enforced from 15 s): from the fourth refusal in a
    row its connections are reset before any authentication. The node keeps that default; each
    refusal here comes from an address of its own, so that what refuses it is what it names.
    """
    prefix = local_cluster.address_prefix
    device, taken = netns.bridge(prefix), [f"{prefix}{host}" for host in range(240, 250)]
    for address in taken:
        netns.add_address(None, f"{address}/32", device)
    try:
        yield iter(taken)
    finally:
        for address in taken:
            netns.remove_address(None, f"{address}/32", device)


def host_keys(ip: str, tmp_path: Path) -> tuple[set[str], str]:
    """The host keys sshd at ``ip`` offers: their fingerprints and known_hosts lines."""
    scan = subprocess.run(["ssh-keyscan", "-T", "10", ip], capture_output=True, text=True, timeout=60, check=True)
    lines = [line for line in scan.stdout.splitlines() if line and not line.startswith("#")]
    listing = tmp_path / f"scan-{ip}"
    listing.write_text("\n".join(lines) + "\n")
    out = subprocess.run(["ssh-keygen", "-lf", str(listing)], capture_output=True, text=True, check=True).stdout
    return set(re.findall(r"SHA256:[A-Za-z0-9+/]+", out)), "\n".join(lines) + "\n"


def test_host_keys_are_the_instances_own_and_on_its_console(local_cluster, tmp_path: Path) -> None:
    offered = {}
    for node in local_cluster.nodes[:2]:
        fingerprints, _ = host_keys(node.ip, tmp_path)
        assert fingerprints, node.member.name
        # What an operator compares with `aws ec2 get-console-output` before trusting the host.
        assert fingerprints <= eic.console_host_fingerprints(node.machine.console_log.read_text(errors="replace"))
        offered[node.member.name] = fingerprints
    first, second = offered.values()
    assert not first & second  # never the image's keys, shared by every member


def test_pushed_key_opens_a_shell_with_sudo_and_nothing_else_does(local_cluster, sources: Iterator[str],
                                                                   tmp_path: Path) -> None:
    node = local_cluster.nodes[0]
    _, known = host_keys(node.ip, tmp_path)
    known_hosts = tmp_path / "known_hosts"
    known_hosts.write_text(known)
    key, public = new_key(tmp_path, "operator")
    home = node.machine.home

    # Nothing pushed: no way in.
    eic.clear(home)
    refused = ssh(node.ip, key, known_hosts, "true", source=next(sources))
    assert refused.returncode == 255 and "Permission denied (publickey)" in refused.stderr, refused.stderr

    # Pushed (send-ssh-public-key): a shell as admin, with passwordless sudo.
    local_cluster.push_ssh_key(node.member.name, public)
    shell = ssh(node.ip, key, known_hosts, "id -un && sudo -n id -u")
    assert shell.returncode == 0, shell.stderr
    assert shell.stdout.split() == [USER, "0"]
    journal = node.machine.run(["journalctl", "-q", "--no-pager", "-t", ak.LOG_IDENT]).stdout
    fingerprint = subprocess.run(["ssh-keygen", "-lf", f"{key}.pub"], capture_output=True, text=True,
                                 check=True).stdout.split()[1]
    assert f"Providing ssh key from EC2 Instance Connect with fingerprint: {fingerprint}" in journal
    assert public.split()[1] not in journal  # fingerprints only, never the key

    # The same key once it has expired (still served, signed to have expired).
    eic.clear(home)
    local_cluster.push_ssh_key(node.member.name, public, expires_in=-1)
    expired = ssh(node.ip, key, known_hosts, "true", source=next(sources))
    assert expired.returncode == 255 and "Permission denied (publickey)" in expired.stderr, expired.stderr

    # Unsigned, or signed by a signer the node does not trust.
    instance_id = node.machine.instance["instance_id"]
    now = int(time.time())
    eic.clear(home)
    local_cluster.push_ssh_key(node.member.name, public,
                               block=f"#Timestamp={now + 60}\n#Instance={instance_id}\n{public}\n\n")
    unsigned = ssh(node.ip, key, known_hosts, "true", source=next(sources))
    assert unsigned.returncode == 255 and "Permission denied (publickey)" in unsigned.stderr, unsigned.stderr
    impostor = eic.Signer.create(local_cluster.s3.region)
    eic.clear(home)
    local_cluster.push_ssh_key(node.member.name, public,
                               block=impostor.key_block(public, instance_id, expires=now + 60))
    forged = ssh(node.ip, key, known_hosts, "true", source=next(sources))
    assert forged.returncode == 255 and "Permission denied (publickey)" in forged.stderr, forged.stderr

    # A password (or keyboard-interactive) is never asked for: the server offers public keys only.
    for method in ("password", "keyboard-interactive"):
        tried = ssh(node.ip, None, known_hosts, "true",
                    options=("-o", f"PreferredAuthentications={method}", "-o", "PubkeyAuthentication=no"),
                    source=next(sources))
        assert tried.returncode == 255 and "Permission denied (publickey)" in tried.stderr, tried.stderr

    # root, even with a validly pushed key.
    eic.clear(home)
    local_cluster.push_ssh_key(node.member.name, public, user="root")
    local_cluster.push_ssh_key(node.member.name, public)
    as_root = ssh(node.ip, key, known_hosts, "true", user="root", source=next(sources))
    assert as_root.returncode == 255 and "Permission denied (publickey)" in as_root.stderr, as_root.stderr
    # ... while the same push lets admin in: the refusal is root's.
    assert ssh(node.ip, key, known_hosts, "true").returncode == 0


def test_pgha_local_ssh_verifies_the_host_by_its_console(local_cluster, tmp_path: Path) -> None:
    """`pgha local ssh MEMBER --command CMD`: a fresh key pushed, the host keys its console
    vouches for, admin's shell."""
    node = local_cluster.nodes[2]
    argv = local_cluster.ssh_argv(node.member.name, tmp_path, ["sudo -n id -un; hostname"])
    done = subprocess.run([*argv[:1], "-o", "BatchMode=yes", *argv[1:]], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["root", node.member.name]
    vouched = eic.console_host_fingerprints(node.machine.console_log.read_text(errors="replace"))
    known = subprocess.run(["ssh-keygen", "-lf", str(tmp_path / "known_hosts")], capture_output=True, text=True,
                           check=True).stdout
    assert set(re.findall(r"SHA256:[A-Za-z0-9+/]+", known)) <= vouched and vouched
