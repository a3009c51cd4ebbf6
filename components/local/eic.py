"""EC2 Instance Connect's side of AWS, for the rehearsal: the signer and the key push.

``aws ec2-instance-connect send-ssh-public-key`` has AWS place the operator's key in the
instance's metadata for 60 seconds, signed by ``managed-ssh-signer.<region>.<domain>``, whose
certificate chains through an intermediate to a root the AMI trusts (Amazon Root CA 1 in
Debian's ca-certificates), with an OCSP staple per certificate. The rehearsal plays AWS: a root
of its own (put in each member's trust store as an AMI carries Amazon's; never in a template),
an intermediate, the signer, and :func:`push`, which writes what the member's IMDS stand-in
(``pgha.local.imds``) then serves under ``managed-ssh-keys/``.
"""

import base64
import datetime
import json
import os
import re
import secrets
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.x509 import ocsp
from cryptography.x509.oid import NameOID

from .imds import KEYS_FILE
from .tls import CertKey

# What AWS gives: a key is served for 60 s and signed to expire then.
KEY_LIFETIME = 60
DOMAIN = "amazonaws.com"
_BACKDATE = datetime.timedelta(minutes=5)
PSS = padding.PSS(mgf=padding.MGF1(hashes.SHA256()), salt_length=32)


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.timezone.utc)


def _pem(cert: x509.Certificate) -> str:
    return cert.public_bytes(serialization.Encoding.PEM).decode()


def _key_pem(key: Any) -> str:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption()).decode()


def _cert(subject: str, key: Any, issuer: x509.Certificate | None, issuer_key: Any, *, ca: bool,
          path_length: int | None = None, days: int = 3650) -> x509.Certificate:
    now = _now()
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)])
    usage = x509.KeyUsage(digital_signature=not ca, content_commitment=False, key_encipherment=False,
                          data_encipherment=False, key_agreement=False, key_cert_sign=ca, crl_sign=ca,
                          encipher_only=False, decipher_only=False)
    return (x509.CertificateBuilder().subject_name(name)
            .issuer_name(issuer.subject if issuer is not None else name)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - _BACKDATE).not_valid_after(now + datetime.timedelta(days=days))
            .add_extension(x509.BasicConstraints(ca=ca, path_length=path_length if ca else None), critical=True)
            .add_extension(usage, critical=True)
            .sign(issuer_key, hashes.SHA256()))


@dataclass(frozen=True)
class Signer:
    """The rehearsal's EC2 Instance Connect PKI: a root, an intermediate, the region's signer."""

    root: CertKey
    intermediate: CertKey
    signer: CertKey

    @classmethod
    def create(cls, region: str, domain: str = DOMAIN, *, signer_cn: str | None = None) -> "Signer":
        root_key = ec.generate_private_key(ec.SECP256R1())
        root = _cert("pgha rehearsal AWS root", root_key, None, root_key, ca=True, path_length=1)
        mid_key = ec.generate_private_key(ec.SECP256R1())
        mid = _cert("pgha rehearsal EC2 Instance Connect CA", mid_key, root, root_key, ca=True, path_length=0)
        signer_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        signer = _cert(signer_cn or f"managed-ssh-signer.{region}.{domain}", signer_key, mid, mid_key, ca=False,
                       days=365)
        return cls(CertKey(_pem(root), _key_pem(root_key)), CertKey(_pem(mid), _key_pem(mid_key)),
                   CertKey(_pem(signer), _key_pem(signer_key)))

    @classmethod
    def load(cls, path: Path, region: str) -> "Signer":
        """The signer kept at ``path`` (0600), made on first use."""
        if path.exists():
            raw = json.loads(path.read_text())
            return cls(**{k: CertKey(**v) for k, v in raw.items()})
        made = cls.create(region)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            json.dump({k: vars(getattr(made, k)) for k in ("root", "intermediate", "signer")}, f)
        return made

    @property
    def chain_pem(self) -> str:
        """``managed-ssh-keys/signer-cert``: the signer, then its intermediate."""
        return self.signer.cert_pem + self.intermediate.cert_pem

    def staple(self, *, status: ocsp.OCSPCertStatus = ocsp.OCSPCertStatus.GOOD) -> tuple[str, str]:
        """The signer's OCSP staple, signed by the intermediate: (SHA-1 fingerprint, base64 DER)."""
        cert, issuer = self.signer.certificate, self.intermediate.certificate
        issuer_key = serialization.load_pem_private_key(self.intermediate.key_pem.encode(), password=None)
        now = _now()
        revoked = now - datetime.timedelta(hours=1) if status == ocsp.OCSPCertStatus.REVOKED else None
        response = (ocsp.OCSPResponseBuilder()
                    .add_response(cert=cert, issuer=issuer, algorithm=hashes.SHA1(), cert_status=status,  # noqa: S303
                                  this_update=now - datetime.timedelta(minutes=1),
                                  next_update=now + datetime.timedelta(hours=12),
                                  revocation_time=revoked, revocation_reason=None)
                    .responder_id(ocsp.OCSPResponderEncoding.HASH, issuer)
                    .sign(issuer_key, hashes.SHA256()))  # type: ignore[arg-type]
        fingerprint = cert.fingerprint(hashes.SHA1()).hex().upper()  # noqa: S303 - AWS's naming
        return fingerprint, base64.b64encode(response.public_bytes(serialization.Encoding.DER)).decode()

    def key_block(self, public_key: str, instance_id: str, *, expires: int, caller: str = "",
                  request: str = "") -> str:
        """One key as AWS serves it: the signed ``#`` lines and key, the signature, a blank line."""
        fields = [f"#Timestamp={expires}", f"#Instance={instance_id}"]
        fields += [f"#Caller={caller}"] if caller else []
        fields += [f"#Request={request or secrets.token_hex(16)}"]
        key_line = " ".join(public_key.split()[:2])
        data = "".join(f"{line}\n" for line in [*fields, key_line]).encode()
        key = serialization.load_pem_private_key(self.signer.key_pem.encode(), password=None)
        assert isinstance(key, rsa.RSAPrivateKey)
        signature = base64.b64encode(key.sign(data, PSS, hashes.SHA256())).decode()
        lines = [*fields, key_line] + [signature[i:i + 76] for i in range(0, len(signature), 76)]
        return "\n".join(lines) + "\n\n"


def push(imds_dir: Path, signer: Signer, *, instance_id: str, user: str, public_key: str,
         expires_in: int = KEY_LIFETIME, caller: str = "arn:aws:iam::123456789012:user/operator",
         block: str | None = None) -> None:
    """What ``send-ssh-public-key`` does: ``public_key`` in the member's metadata for 60 s, signed
    to expire ``expires_in`` seconds from now (``block``: serve exactly that text instead)."""
    path = imds_dir / KEYS_FILE
    now = time.time()
    state: dict[str, Any] = json.loads(path.read_text()) if path.exists() else {}
    fingerprint, staple = signer.staple()
    state["signer_cert"] = signer.chain_pem
    state["ocsp"] = {fingerprint: staple}
    keys = [k for k in state.get("active_keys", {}).get(user, []) if k["until"] > now]
    text = block if block is not None else signer.key_block(public_key, instance_id, expires=int(now) + expires_in,
                                                            caller=caller)
    keys.append({"block": text, "until": now + KEY_LIFETIME})
    state.setdefault("active_keys", {})[user] = keys
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(state, indent=1))
    os.replace(tmp, path)


def clear(imds_dir: Path) -> None:
    """No key pushed (a new instance's metadata)."""
    (imds_dir / KEYS_FILE).unlink(missing_ok=True)


def console_host_fingerprints(console: str) -> set[str]:
    """The SHA256 host key fingerprints cloud-init printed last to the console (its "BEGIN SSH
    HOST KEY FINGERPRINTS" block, what ``aws ec2 get-console-output`` shows on EC2)."""
    begin, end = "-----BEGIN SSH HOST KEY FINGERPRINTS-----", "-----END SSH HOST KEY FINGERPRINTS-----"
    if begin not in console:
        return set()
    block = console.rsplit(begin, 1)[1].split(end, 1)[0]
    return set(re.findall(r"SHA256:[A-Za-z0-9+/]+", block))


def verified_known_hosts(ip: str, console: str, workdir: Path) -> str:
    """known_hosts lines of the host keys sshd at ``ip`` offers that the console vouches for."""
    vouched = console_host_fingerprints(console)
    scan = subprocess.run(["ssh-keyscan", "-T", "10", ip], capture_output=True, text=True, timeout=60)
    lines = []
    for i, line in enumerate(x for x in scan.stdout.splitlines() if x and not x.startswith("#")):
        one = workdir / f"hostkey-{i}"
        one.write_text(line + "\n")
        listed = subprocess.run(["ssh-keygen", "-lf", str(one)], capture_output=True, text=True).stdout.split()
        if len(listed) > 1 and listed[1] in vouched:
            lines.append(line)
    return "".join(f"{line}\n" for line in lines)
