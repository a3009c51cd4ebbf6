"""`authorized-keys`: EC2 Instance Connect's pushed keys, checked as AWS's own script checks them."""

import base64
import datetime
import json
import threading
import time
from pathlib import Path
from typing import Iterator

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519
from cryptography.x509 import ocsp

from pgha.agent import authorized_keys as ak
from pgha.local import eic
from pgha.local.imds import ImdsServer

REGION = "eu-west-1"
INSTANCE = "i-0123456789abcdef0"
USER = "root"  # a user that exists wherever the tests run


def new_public_key() -> str:
    key = ed25519.Ed25519PrivateKey.generate().public_key()
    return key.public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH).decode()


@pytest.fixture(scope="module")
def signer() -> eic.Signer:
    return eic.Signer.create(REGION)


class FakeImds:
    """The metadata paths the command reads, from a push's state (as pgha.local.imds serves them)."""

    def __init__(self, signer: eic.Signer, tmp: Path, **facts: str):
        self.dir = tmp
        self.signer = signer
        self.facts = {"instance-id": INSTANCE, "placement/availability-zone": f"{REGION}b",
                      "services/domain": "amazonaws.com", **facts}

    def push(self, public_key: str, **kw: object) -> None:
        eic.push(self.dir, self.signer, instance_id=INSTANCE, user=USER, public_key=public_key, **kw)  # type: ignore[arg-type]

    def get(self, path: str) -> str | None:
        if path in self.facts:
            return self.facts[path]
        from pgha.local.imds import managed_ssh_keys

        state = json.loads((self.dir / eic.KEYS_FILE).read_text()) if (self.dir / eic.KEYS_FILE).exists() else {}
        if path.startswith("managed-ssh-keys/"):
            return managed_ssh_keys(state, path.removeprefix("managed-ssh-keys/"), time.time())
        return None


@pytest.fixture
def imds(signer: eic.Signer, tmp_path: Path) -> FakeImds:
    return FakeImds(signer, tmp_path)


def keys(imds: FakeImds, trusted: list[x509.Certificate], fingerprint: str = "", log: list[str] | None = None,
         now: float | None = None) -> list[str]:
    lines = log if log is not None else []
    try:
        return ak.authorized_keys(USER, fingerprint, imds.get, trusted, time.time() if now is None else now,
                                  lines.append)
    except ak.Refused as exc:
        lines.append(str(exc))
        return []


def test_pushed_key_is_trusted_and_only_its_fingerprint_logged(imds: FakeImds, signer: eic.Signer) -> None:
    public = new_public_key()
    imds.push(public)
    log: list[str] = []
    fp = ak.ssh_fingerprint(public)
    assert keys(imds, [signer.root.certificate], fp, log) == [public]
    assert any(fp in line for line in log)
    assert not any(public.split()[1] in line for line in log)


def test_fingerprint_matches_ssh_keygen(tmp_path: Path) -> None:
    import subprocess

    public = new_public_key()
    (tmp_path / "k.pub").write_text(public + "\n")
    out = subprocess.run(["ssh-keygen", "-lf", str(tmp_path / "k.pub")], capture_output=True, text=True, check=True)
    assert out.stdout.split()[1] == ak.ssh_fingerprint(public)


def test_other_fingerprint_gets_nothing(imds: FakeImds, signer: eic.Signer) -> None:
    imds.push(new_public_key())
    assert keys(imds, [signer.root.certificate], ak.ssh_fingerprint(new_public_key())) == []


def test_expired_key_is_refused(imds: FakeImds, signer: eic.Signer) -> None:
    public = new_public_key()
    imds.push(public, expires_in=-1)  # still served, but signed to have expired
    assert keys(imds, [signer.root.certificate]) == []
    # ... and one that expires later is refused once its time has come
    imds.push(public)
    assert keys(imds, [signer.root.certificate]) == [public]
    assert keys(imds, [signer.root.certificate], now=time.time() + eic.KEY_LIFETIME + 1) == []


def test_key_for_another_instance_is_refused(imds: FakeImds, signer: eic.Signer) -> None:
    public = new_public_key()
    block = signer.key_block(public, "i-0fedcba9876543210", expires=int(time.time()) + 60)
    imds.push(public, block=block)
    assert keys(imds, [signer.root.certificate]) == []


def test_unsigned_or_wrongly_signed_key_is_refused(imds: FakeImds, signer: eic.Signer) -> None:
    public = new_public_key()
    expires = int(time.time()) + 60
    unsigned = f"#Timestamp={expires}\n#Instance={INSTANCE}\n{public}\n\n"
    imds.push(public, block=unsigned)
    other = eic.Signer.create(REGION)
    imds.push(public, block=other.key_block(public, INSTANCE, expires=expires))
    # a signed block whose signed lines were altered afterwards (a later expiry)
    good = signer.key_block(public, INSTANCE, expires=expires)
    imds.push(public, block=good.replace(f"#Timestamp={expires}", f"#Timestamp={expires + 3600}"))
    assert keys(imds, [signer.root.certificate]) == []
    imds.push(public)
    assert keys(imds, [signer.root.certificate]) == [public]  # the signer itself is fine


def test_signer_from_an_untrusted_root_is_refused(imds: FakeImds, signer: eic.Signer) -> None:
    imds.push(new_public_key())
    log: list[str] = []
    assert keys(imds, [eic.Signer.create(REGION).root.certificate], log=log) == []
    assert "trusted root" in log[-1]


def test_chain_ending_in_a_held_certificate(signer: eic.Signer) -> None:
    """A chain whose intermediate the trust store holds itself is trusted there: no staple is
    needed for it; a chain without its intermediate is not trusted at all."""
    now = datetime.datetime.now(datetime.timezone.utc)
    chain = [signer.signer.certificate, signer.intermediate.certificate]
    fingerprint, staple = signer.staple()
    staples = {fingerprint: base64.b64decode(staple)}
    assert ak.verify_signer(chain, [signer.intermediate.certificate], f"managed-ssh-signer.{REGION}.amazonaws.com",
                            staples.get, now)
    with pytest.raises(ak.Refused, match="without its chain"):
        ak.verify_signer(chain[:1], [signer.root.certificate], f"managed-ssh-signer.{REGION}.amazonaws.com",
                         staples.get, now)
    with pytest.raises(ak.Refused, match="no OCSP staple"):
        ak.verify_signer(chain, [signer.root.certificate], f"managed-ssh-signer.{REGION}.amazonaws.com",
                         {}.get, now)


def test_signer_of_another_name_is_refused(tmp_path: Path) -> None:
    impostor = eic.Signer.create(REGION, signer_cn="managed-ssh-signer.us-east-1.amazonaws.com")
    imds = FakeImds(impostor, tmp_path)
    imds.push(new_public_key())
    log: list[str] = []
    assert keys(imds, [impostor.root.certificate], log=log) == []
    assert "unrecognized signer" in log[-1]


def test_domain_outside_aws_is_refused(signer: eic.Signer, tmp_path: Path) -> None:
    imds = FakeImds(signer, tmp_path, **{"services/domain": "example.com"})
    imds.push(new_public_key())
    assert keys(imds, [signer.root.certificate]) == []


def test_revoked_or_missing_staple_is_refused(imds: FakeImds, signer: eic.Signer) -> None:
    public = new_public_key()
    imds.push(public)
    state_file = imds.dir / eic.KEYS_FILE
    state = json.loads(state_file.read_text())
    fingerprint, revoked = signer.staple(status=ocsp.OCSPCertStatus.REVOKED)
    state_file.write_text(json.dumps({**state, "ocsp": {fingerprint: revoked}}))
    log: list[str] = []
    assert keys(imds, [signer.root.certificate], log=log) == []
    assert "revoked" in log[-1]
    state_file.write_text(json.dumps({**state, "ocsp": {}}))
    assert keys(imds, [signer.root.certificate], log=log) == []
    assert "no OCSP staple" in log[-1]
    # a staple signed by someone other than the issuer
    other_fp, other = eic.Signer.create(REGION).staple()
    state_file.write_text(json.dumps({**state, "ocsp": {fingerprint: other}}))
    assert keys(imds, [signer.root.certificate], log=log) == []


def test_nothing_pushed_or_unknown_user_gets_nothing(imds: FakeImds, signer: eic.Signer) -> None:
    assert keys(imds, [signer.root.certificate]) == []
    imds.push(new_public_key())
    assert ak.authorized_keys("no-such-user-pgha", "", imds.get, [signer.root.certificate], time.time(),
                              lambda _: None) == []


def test_parse_blocks_reads_multiline_signatures_and_skips_junk() -> None:
    text = ("#Timestamp=1\n#Instance=i-1\nssh-ed25519 AAAA x\nQUJD\nREVG\n\n"
            "#Timestamp=2\nnot-a-key\nmore\n\n#Timestamp=3\nssh-rsa BBBB\nR0hJ\n")
    blocks = ak.parse_blocks(text)
    assert [(b.key, b.signature, b.value("Timestamp")) for b in blocks] == [
        ("ssh-ed25519 AAAA x", "QUJDREVG", "1"), ("ssh-rsa BBBB", "R0hJ", "3")]
    assert blocks[0].signed_data == b"#Timestamp=1\n#Instance=i-1\nssh-ed25519 AAAA x\n"


@pytest.fixture
def imds_server(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    facts = {"role": "r", "access_key_id": "a", "secret_access_key": "s", "session_token": "t",
             "instance_id": INSTANCE, "region": REGION, "availability_zone": f"{REGION}a", "local_ipv4": "10.0.0.1",
             "hostname": "m", "instance_type": "t4g.micro", "account_id": "123456789012", "architecture": "arm64",
             "image_id": "ami-1"}
    (tmp_path / "imds.json").write_text(json.dumps(facts))
    server = ImdsServer(("127.0.0.1", 0), tmp_path / "imds.json")
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", tmp_path
    finally:
        server.shutdown()
        server.server_close()


def test_run_against_the_imds_stand_in(imds_server: tuple[str, Path], signer: eic.Signer) -> None:
    """The whole command: IMDSv2 token, the stand-in's managed-ssh-keys, a trust bundle file."""
    endpoint, home = imds_server
    bundle = home / "bundle.crt"
    bundle.write_text(eic.Signer.create(REGION).root.cert_pem + signer.root.cert_pem)
    public = new_public_key()
    log: list[str] = []
    assert ak.run(USER, endpoint=endpoint, bundle=str(bundle), log=log.append) == []  # nothing pushed yet
    eic.push(home, signer, instance_id=INSTANCE, user=USER, public_key=public)
    assert ak.run(USER, ak.ssh_fingerprint(public), endpoint=endpoint, bundle=str(bundle), log=log.append) == [public]
    # signed to expire in 60 s: refused after that
    assert ak.run(USER, endpoint=endpoint, bundle=str(bundle), now=time.time() + 120, log=log.append) == []
    (home / "empty.crt").write_text("")
    assert ak.run(USER, endpoint=endpoint, bundle=str(home / "empty.crt"), log=log.append) == []
    assert ak.run(USER, endpoint="http://127.0.0.1:9", bundle=str(bundle), log=log.append) == []
    assert "No keys have been trusted" in log[-1]
    assert not any(public.split()[1] in line for line in log)
