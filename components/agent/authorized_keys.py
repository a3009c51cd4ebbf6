"""`authorized-keys USER [FINGERPRINT]`: sshd's AuthorizedKeysCommand for EC2 Instance Connect.

``aws ec2-instance-connect send-ssh-public-key`` (and ``ssh --connection-type eice``) does not
touch the instance: AWS puts the operator's public key into the instance's metadata for 60
seconds, signed by a regional signer certificate. This command is what AWS's own
ec2-instance-connect package (not in Debian) runs for sshd, rewritten on Python's stdlib and
Debian's python3-cryptography, step for step as aws/aws-ec2-instance-connect-config's
``eic_curl_authorized_keys`` and ``eic_parse_authorized_keys`` do:

* IMDSv2: ``instance-id`` (``i-`` and 8-32 hex digits), the zone (and so the region) and
  ``services/domain`` (one of AWS's partitions), then ``managed-ssh-keys/active-keys/USER/``.
* The signer: ``managed-ssh-keys/signer-cert`` is the signer certificate and its chain; its CN
  must be ``managed-ssh-signer.<region>.<domain>``, each certificate must be issued by the next
  and the last by a root of the system trust store (``ca-certificates``: Amazon's roots on EC2,
  the rehearsal's stand-in there), each one but the last must have a good OCSP staple, signed
  by its issuer, at ``managed-ssh-keys/signer-ocsp/<SHA-1 fingerprint>``.
* Each key block (``#Timestamp=``, ``#Instance=``, ``#Caller=``, ``#Request=`` lines, the key,
  a base64 signature, a blank line): the instance must be this one, the timestamp (the key's
  expiry) in the future, the signature RSA-PSS/SHA-256 (salt 32) by the signer over the
  ``#`` lines and the key, and, when sshd gives one, the key's fingerprint the one offered.

It fails closed: any error prints no key. Only fingerprints are logged (authpriv, as AWS's
script does). Where it differs from AWS's script: it does not check /sys/hypervisor/uuid or
the DMI asset tag against the instance id (a member of the rehearsal is a container; the
metadata service is reached on the link-local address only either way).
"""

import argparse
import base64
import datetime
import hashlib
import pwd
import re
import sys
import syslog
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from typing import Callable, Sequence

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.x509 import ocsp
from cryptography.x509.oid import NameOID

from .cli_types import Subparsers

IMDS_ENDPOINT = "http://169.254.169.254"
# AWS's script: 1 s per request, a 5 s token (sshd waits on the whole command).
IMDS_TIMEOUT = 1.0
IMDS_TOKEN_TTL = 5
# Debian's ca-certificates bundle: what AWS's script trusts (/etc/ssl/certs) on any AMI.
TRUST_BUNDLE = "/etc/ssl/certs/ca-certificates.crt"
VALID_DOMAINS = ("amazonaws.com", "amazonaws.com.cn", "c2s.ic.gov", "sc2s.sgov.gov")
INSTANCE_ID = re.compile(r"^i-[0-9a-f]{8,32}$")
ZONE = re.compile(r"^([a-z]+-){2,3}[0-9][a-z]$")
# openssl ocsp's default leeway on thisUpdate/nextUpdate (-validity_period 300).
OCSP_LEEWAY = datetime.timedelta(minutes=5)
PSS = padding.PSS(mgf=padding.MGF1(hashes.SHA256()), salt_length=32)
# The syslog identifier of its authpriv lines (journalctl -t pgha-authorized-keys).
LOG_IDENT = "pgha-authorized-keys"


class Refused(Exception):
    """Why no key is trusted (logged; nothing printed)."""


# -- the metadata service ----------------------------------------------------------------------

Fetch = Callable[[str], "str | None"]


def imds_fetcher(endpoint: str = IMDS_ENDPOINT) -> Fetch:
    """A GET of IMDSv2 paths under /latest/meta-data/: the body, or None for a 404."""
    req = urllib.request.Request(f"{endpoint}/latest/api/token", method="PUT",
                                 headers={"X-aws-ec2-metadata-token-ttl-seconds": str(IMDS_TOKEN_TTL)})
    try:
        with urllib.request.urlopen(req, timeout=IMDS_TIMEOUT) as resp:
            token = resp.read().decode()
    except OSError as exc:
        raise Refused(f"failed to establish trust with the Instance Metadata Service: {exc}") from None
    if not token:
        raise Refused("failed to get a token from the Instance Metadata Service")

    def get(path: str) -> str | None:
        r = urllib.request.Request(f"{endpoint}/latest/meta-data/{path}",
                                   headers={"X-aws-ec2-metadata-token": token})
        try:
            with urllib.request.urlopen(r, timeout=IMDS_TIMEOUT) as resp:
                return resp.read().decode()
        except urllib.error.HTTPError as exc:
            if exc.code == 404:
                return None
            raise Refused(f"metadata {path}: HTTP {exc.code}") from None
        except OSError as exc:
            raise Refused(f"metadata {path}: {exc}") from None
    return get


# -- the signer certificate ---------------------------------------------------------------------

def load_pem_chain(text: str) -> list[x509.Certificate]:
    blocks = re.findall(r"-----BEGIN CERTIFICATE-----.+?-----END CERTIFICATE-----", text, re.S)
    return [x509.load_pem_x509_certificate(b.encode()) for b in blocks]


def sha1_fingerprint(cert: x509.Certificate) -> str:
    """The staple's name: the certificate's SHA-1 fingerprint, hex, upper case, no colons."""
    return cert.fingerprint(hashes.SHA1()).hex().upper()  # noqa: S303 - AWS's naming, not a security check


def _cn(cert: x509.Certificate) -> str:
    names = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    return str(names[0].value) if names else ""


def _valid_at(cert: x509.Certificate, now: datetime.datetime) -> None:
    if not cert.not_valid_before_utc <= now <= cert.not_valid_after_utc:
        raise Refused(f"certificate {_cn(cert)} is not valid now")


def _issued_by(cert: x509.Certificate, issuer: x509.Certificate) -> bool:
    try:
        constraints = issuer.extensions.get_extension_for_class(x509.BasicConstraints).value
    except x509.ExtensionNotFound:
        return False
    if not constraints.ca:
        return False
    try:
        cert.verify_directly_issued_by(issuer)
    except (ValueError, TypeError, InvalidSignature):
        return False
    return True


def _verify_signature(public_key: object, signature: bytes, data: bytes,
                      algorithm: hashes.HashAlgorithm | None) -> None:
    """A signature over ``data`` by ``public_key`` (an OCSP response: RSA PKCS#1 v1.5 or ECDSA)."""
    if algorithm is None:
        raise Refused("OCSP response signed with an unsupported algorithm")
    try:
        if isinstance(public_key, rsa.RSAPublicKey):
            public_key.verify(signature, data, padding.PKCS1v15(), algorithm)
        elif isinstance(public_key, ec.EllipticCurvePublicKey):
            public_key.verify(signature, data, ec.ECDSA(algorithm))
        else:
            raise Refused("OCSP responder key of an unsupported type")
    except InvalidSignature:
        raise Refused("OCSP response signature does not verify") from None


def verify_ocsp(cert: x509.Certificate, issuer: x509.Certificate, der: bytes, now: datetime.datetime) -> None:
    """As ``openssl ocsp -issuer ISSUER -cert CERT -VAfile ISSUER -respin DER``: a successful
    response, signed by the issuer itself, about this certificate, current, and "good"."""
    try:
        resp = ocsp.load_der_ocsp_response(der)
    except ValueError:
        raise Refused(f"OCSP staple of {_cn(cert)} is not an OCSP response") from None
    if resp.response_status != ocsp.OCSPResponseStatus.SUCCESSFUL:
        raise Refused(f"OCSP staple of {_cn(cert)}: {resp.response_status.name}")
    expected = ocsp.OCSPRequestBuilder().add_certificate(cert, issuer, resp.hash_algorithm).build()
    if (resp.serial_number, resp.issuer_key_hash, resp.issuer_name_hash) != (
            expected.serial_number, expected.issuer_key_hash, expected.issuer_name_hash):
        raise Refused(f"OCSP staple of {_cn(cert)} is about another certificate")
    # -VAfile ISSUER: the responder must be the issuer itself (no delegated responder).
    issuer_key_hash = expected.issuer_key_hash if isinstance(resp.hash_algorithm, hashes.SHA1) else \
        ocsp.OCSPRequestBuilder().add_certificate(cert, issuer, hashes.SHA1()).build().issuer_key_hash
    if resp.responder_name is not None:
        if resp.responder_name != issuer.subject:
            raise Refused(f"OCSP staple of {_cn(cert)} is not signed by its issuer")
    elif resp.responder_key_hash != issuer_key_hash:
        raise Refused(f"OCSP staple of {_cn(cert)} is not signed by its issuer")
    _verify_signature(issuer.public_key(), resp.signature, resp.tbs_response_bytes, resp.signature_hash_algorithm)
    if resp.this_update_utc > now + OCSP_LEEWAY or (
            resp.next_update_utc is not None and resp.next_update_utc < now - OCSP_LEEWAY):
        raise Refused(f"OCSP staple of {_cn(cert)} is not current")
    if resp.certificate_status != ocsp.OCSPCertStatus.GOOD:
        raise Refused(f"certificate {_cn(cert)} is {resp.certificate_status.name.lower()} (OCSP)")


def verify_signer(chain: Sequence[x509.Certificate], trusted: Sequence[x509.Certificate], expected_cn: str,
                  staples: Callable[[str], bytes | None], now: datetime.datetime) -> rsa.RSAPublicKey:
    """The signer's public key once ``chain`` (signer first) is proven: its CN, each certificate
    issued by the next, the last by a ``trusted`` root, and every one before the last not revoked
    (``staples`` gives a staple by SHA-1 fingerprint)."""
    if len(chain) < 2:
        raise Refused("the signer certificate comes without its chain")
    signer = chain[0]
    if _cn(signer) != expected_cn:
        raise Refused("unrecognized signer certificate")
    # As AWS's script: a certificate of the chain that the trust store holds itself ends the
    # chain (trusted, no staple needed from there on); else the last must be issued by a root.
    held = {t.fingerprint(hashes.SHA256()) for t in trusted}
    for end, cert in enumerate(chain):
        if end > 0 and cert.fingerprint(hashes.SHA256()) in held:
            chain = chain[:end + 1]
            break
    else:
        roots = [r for r in trusted if _issued_by(chain[-1], r)]
        if not roots:
            raise Refused("the signer's chain does not lead to a trusted root")
        _valid_at(roots[0], now)
    for cert in chain:
        _valid_at(cert, now)
    for cert, issuer in zip(chain, chain[1:]):
        if not _issued_by(cert, issuer):
            raise Refused(f"certificate {_cn(cert)} is not issued by {_cn(issuer)}")
    for cert, issuer in zip(chain, chain[1:]):
        der = staples(sha1_fingerprint(cert))
        if der is None:
            raise Refused(f"no OCSP staple for certificate {_cn(cert)}")
        verify_ocsp(cert, issuer, der, now)
    key = signer.public_key()
    if not isinstance(key, rsa.RSAPublicKey):
        raise Refused("the signer's key is not RSA")
    return key


# -- the key blocks -----------------------------------------------------------------------------

@dataclass
class KeyBlock:
    """One pushed key: its ``#Name=value`` lines (signed, in order), the key line, its signature."""

    fields: list[str] = field(default_factory=list)
    key: str = ""
    signature: str = ""

    def value(self, name: str) -> str:
        prefix = f"#{name}="
        found = [f.removeprefix(prefix) for f in self.fields if f.startswith(prefix)]
        return found[-1] if found else ""

    @property
    def signed_data(self) -> bytes:
        return "".join(f"{line}\n" for line in [*self.fields, self.key]).encode()


def parse_blocks(text: str) -> list[KeyBlock]:
    """The blocks of ``active-keys/USER/``, as AWS's parser reads them (lines stripped as
    ``read -r`` does; a block without an ``ssh`` key line is skipped)."""
    blocks: list[KeyBlock] = []
    lines = [line.strip() for line in text.splitlines()]
    i = 0
    while i < len(lines):
        block = KeyBlock()
        while i < len(lines) and lines[i].startswith("#"):
            block.fields.append(lines[i])
            i += 1
        if i < len(lines) and lines[i].startswith("ssh"):
            block.key = lines[i]
            i += 1
            sig = []
            while i < len(lines) and lines[i]:
                sig.append(lines[i])
                i += 1
            block.signature = "".join(sig)
            blocks.append(block)
        while i < len(lines) and lines[i]:
            i += 1
        i += 1
    return blocks


def ssh_fingerprint(key_line: str) -> str:
    """``ssh-keygen -l``'s SHA256:... of an authorized_keys line (sshd's %f)."""
    parts = key_line.split()
    if len(parts) < 2:
        raise ValueError("not a public key line")
    blob = base64.b64decode(parts[1], validate=True)
    return "SHA256:" + base64.b64encode(hashlib.sha256(blob).digest()).decode().rstrip("=")


def trusted_keys(blocks: Sequence[KeyBlock], signer_key: rsa.RSAPublicKey, instance_id: str, now: float,
                 fingerprint: str = "") -> list[tuple[str, KeyBlock]]:
    """(fingerprint, block) of each block for this instance, unexpired, signed by the signer
    (and, with ``fingerprint``, that key only)."""
    out = []
    for block in blocks:
        try:
            expiry = int(block.value("Timestamp") or "0")
            fp = ssh_fingerprint(block.key)
            signature = base64.b64decode(block.signature, validate=True)
        except ValueError:
            continue
        if not block.value("Instance") or expiry == 0:
            continue
        if fingerprint and fp != fingerprint:
            continue
        if block.value("Instance") != instance_id or expiry <= now:
            continue
        try:
            signer_key.verify(signature, block.signed_data, PSS, hashes.SHA256())
        except InvalidSignature:
            continue
        out.append((fp, block))
    return out


# -- the command --------------------------------------------------------------------------------

def _log(message: str) -> None:
    syslog.openlog(LOG_IDENT, syslog.LOG_PID, syslog.LOG_AUTHPRIV)
    syslog.syslog(syslog.LOG_INFO, message)


def authorized_keys(user: str, fingerprint: str, get: Fetch, trusted: Sequence[x509.Certificate],
                    now: float, log: Callable[[str], None] = _log) -> list[str]:
    """The key lines sshd may accept for ``user``; an empty list (and why, logged) otherwise."""
    instance = (get("instance-id") or "").strip().splitlines()
    if not instance or not INSTANCE_ID.match(instance[0]):
        return []
    instance_id = instance[0]
    try:
        pwd.getpwnam(user)
    except KeyError:
        return []  # no such user: sshd refuses it by itself
    if get(f"managed-ssh-keys/active-keys/{user}/") is None:
        return []  # nothing pushed for this user
    zone = (get("placement/availability-zone") or "").strip()
    if not ZONE.match(zone):
        raise Refused("invalid availability zone")
    region = re.sub(r"[a-z]$", "", zone)
    domain = (get("services/domain") or "").strip()
    if domain not in VALID_DOMAINS:
        raise Refused("invalid domain")
    signer_pem = get("managed-ssh-keys/signer-cert/") or ""
    chain = load_pem_chain(signer_pem)

    def staple(name: str) -> bytes | None:
        listed = (get("managed-ssh-keys/signer-ocsp/") or "").split()
        if name not in listed:
            return None
        body = get(f"managed-ssh-keys/signer-ocsp/{name}")
        return base64.b64decode(body) if body else None

    moment = datetime.datetime.fromtimestamp(now, datetime.timezone.utc)
    signer_key = verify_signer(chain, trusted, f"managed-ssh-signer.{region}.{domain}", staple, moment)
    blocks = parse_blocks(get(f"managed-ssh-keys/active-keys/{user}/") or "")
    if fingerprint:
        log(f"Querying EC2 Instance Connect keys for matching fingerprint: {fingerprint}")
    keys = []
    for fp, block in trusted_keys(blocks, signer_key, instance_id, now, fingerprint):
        message = f"Providing ssh key from EC2 Instance Connect with fingerprint: {fp}"
        if block.value("Request"):
            message += f", request-id: {block.value('Request')}"
        if block.value("Caller"):
            message += f", for IAM principal: {block.value('Caller')}"
        log(message)
        keys.append(block.key)
    return keys


def load_trust_bundle(path: str = TRUST_BUNDLE) -> list[x509.Certificate]:
    with open(path) as f:
        return load_pem_chain(f.read())


def run(user: str, fingerprint: str = "", *, endpoint: str = IMDS_ENDPOINT, bundle: str = TRUST_BUNDLE,
        now: float | None = None, log: Callable[[str], None] = _log) -> list[str]:
    """Fail closed: any error is logged (no key material) and trusts nothing."""
    try:
        return authorized_keys(user, fingerprint, imds_fetcher(endpoint), load_trust_bundle(bundle),
                               time.time() if now is None else now, log)
    except Refused as exc:
        log(f"EC2 Instance Connect: {exc}. No keys have been trusted.")
    except Exception as exc:  # noqa: BLE001 - nothing escapes to sshd but "no key"
        log(f"EC2 Instance Connect failed ({type(exc).__name__}). No keys have been trusted.")
    return []


def cmd_authorized_keys(node: dict, args: argparse.Namespace) -> int:
    keys = run(args.user, args.fingerprint or "")
    if keys:
        sys.stdout.write("".join(f"{k}\n" for k in keys))
        sys.stdout.flush()
    return 0 if keys else 1


def register(sub: Subparsers, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser("authorized-keys", parents=[common],
                       help="sshd's AuthorizedKeysCommand: EC2 Instance Connect's pushed keys",
                       description="Print the keys pushed for USER by EC2 Instance Connect (IMDSv2 "
                                   "managed-ssh-keys) that are for this instance, unexpired and signed by "
                                   "AWS's signer certificate, whose chain leads to the system trust store; "
                                   "nothing on any error. sshd runs it as AuthorizedKeysCommand ... %%u %%f.")
    p.add_argument("user", help="the login user (sshd's %%u)")
    p.add_argument("fingerprint", nargs="?", default="", help="the offered key's fingerprint (sshd's %%f)")
    p.set_defaults(func=cmd_authorized_keys)


__all__ = ["Refused", "authorized_keys", "parse_blocks", "register", "run", "ssh_fingerprint", "trusted_keys",
           "verify_ocsp", "verify_signer"]
