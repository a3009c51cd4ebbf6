"""Database branches of the local cluster: a single node restored from the cluster's backups.

A branch is the ``branch`` stack kind run locally: the source stack's config with
``stackKind: branch``, its own cluster name (= its own pgBackRest stanza), no replicas and
asynchronous replication. Its members are machines on the source's network, at
``<prefix><slot>1`` (10.213.0.11, .21, ...), its files under ``<source root>/branches/<name>``,
its archive in its own bucket ``pgha-<name>`` on the source's AWS stand-in. Patroni's custom bootstrap restores the source's repository (read
only: the source's bucket and stanza are options of the restore command alone) and promotes on
a new timeline; from then on the branch archives into its own repository only. A source with
``backup.encryption`` is restored with its own cipher pass, which the branch's agent reads at
boot from the source's cipher secret in Secrets Manager (as on EC2), not the branch's.
"""


import json
import shutil
import time
from pathlib import Path
from typing import Any, Callable

from ..spec import PORTS, build_spec
from ..spec.stackfile import read_stack_config
from ..spec.validate import CLUSTER_NAME_RE
from .backups import BackupError, backup_for, check_target, info, verify
from .cluster import LocalCluster

MAX_BRANCHES = 9


def _registry_path(source: LocalCluster) -> Path:
    return source.root / "branches.json"


def _registry(source: LocalCluster) -> dict[str, dict[str, Any]]:
    path = _registry_path(source)
    return json.loads(path.read_text()) if path.exists() else {}


def _save(source: LocalCluster, registry: dict[str, dict[str, Any]]) -> None:
    path = _registry_path(source)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(registry, indent=1, sort_keys=True) + "\n")
    tmp.replace(path)


def branch_values(source: LocalCluster, name: str, target: str) -> dict[str, Any]:
    """The branch's stack config: the source's, as stack kind branch with one member."""
    values, _ = read_stack_config(source.project_dir, source.stack)
    values = {k: v for k, v in values.items() if k not in ("clusterName", "replicas", "rpo")}
    branch: dict[str, str] = {"sourceBucket": source.bucket, "sourceStanza": source.spec.cluster_name}
    if target != "latest":
        branch["targetLsn" if "/" in target and ":" not in target else "targetTime"] = target
    return {**values, "stackKind": "branch", "clusterName": name, "branch": branch}


def open_branch(source: LocalCluster, name: str, entry: dict[str, Any]) -> LocalCluster:
    """The branch's LocalCluster. Of an encrypted source, its agent reads the source's cipher pass
    from the source's cipher secret (never copied into the branch's files or config)."""
    _, region = read_stack_config(source.project_dir, source.stack)
    spec = build_spec(entry["values"], stack=source.stack, region=region,
                      region_azs=[f"{region}a", f"{region}b", f"{region}c"])
    return LocalCluster(project_dir=source.project_dir, stack=source.stack, root=Path(entry["root"]),
                        address_prefix=source.address_prefix, host_offset=entry["slot"] * 10, spec=spec, s3=source.s3,
                        source_cipher_secret=source.cipher_secret_name if source.spec.backup.encryption else "",
                        image_cache=source.image_cache)


def create(source: LocalCluster, name: str, target: str = "latest", *, log: Callable[[str], None] = print,
           timeout: float = 300) -> dict[str, Any]:
    """Start branch ``name`` of ``source`` restored to ``target``; return its registry entry."""
    if not CLUSTER_NAME_RE.fullmatch(name) or len(name) > 24:
        raise BackupError(f"branch name {name!r}: lowercase letters, digits and '-', starting with a letter")
    if name == source.spec.cluster_name:
        raise BackupError("a branch needs a name of its own: it is its pgBackRest stanza")
    target = check_target(target)
    registry = _registry(source)
    if name in registry:
        raise BackupError(f"branch {name} exists (pgha branch delete {name} first)")
    chosen = backup_for(info(source), target)
    verify(source, source.nodes[0], chosen["label"])
    used = {entry["slot"] for entry in registry.values()}
    slot = next((i for i in range(1, MAX_BRANCHES + 1) if i not in used), None)
    if slot is None:
        raise BackupError(f"at most {MAX_BRANCHES} branches at once")
    entry = {"slot": slot, "root": str(source.root / "branches" / name),
             "source": source.spec.cluster_name, "target": target, "backup": chosen["label"],
             "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
             "values": branch_values(source, name, target)}
    branch = open_branch(source, name, entry)
    registry[name] = entry
    _save(source, registry)
    log(f"branch {name} of {source.spec.cluster_name} at {target} (backup {chosen['label']}) on "
        f"{branch.nodes[0].ip}, archive in bucket {branch.bucket}")
    try:
        branch.up(timeout=timeout, log=log)
    except Exception:
        log(f"branch {name} did not come up; its files stay under {entry['root']} (pgha branch delete {name})")
        raise
    return entry


def list_branches(source: LocalCluster) -> list[dict[str, Any]]:
    out = []
    for name, entry in sorted(_registry(source).items()):
        branch = open_branch(source, name, entry)
        view = branch.cluster_view() or {}
        leader = next((m for m in view.get("members", []) if m.get("role") == "leader"), None)
        out.append({"name": name, "ip": branch.nodes[0].ip, "source": entry["source"], "target": entry["target"],
                    "backup": entry["backup"], "created": entry["created"], "bucket": branch.bucket,
                    "state": leader["state"] if leader else "down",
                    "timeline": leader.get("timeline") if leader else None,
                    "dsn": branch.dsn(branch.nodes[0].ip, PORTS["primary"])})
    return out


def delete(source: LocalCluster, name: str, *, log: Callable[[str], None] = print) -> None:
    """Stop the branch, remove its files and its own bucket; the source is not touched."""
    registry = _registry(source)
    if name not in registry:
        raise BackupError(f"no branch {name} (pgha branch list)")
    entry = registry[name]
    branch = open_branch(source, name, entry)
    branch.down(log=log)
    for node in branch.nodes:
        node.machine.destroy()
    client = source.s3.client()
    try:
        pages = client.get_paginator("list_objects_v2").paginate(Bucket=branch.bucket)
        for page in pages:
            keys = [{"Key": o["Key"]} for o in page.get("Contents", [])]
            if keys:
                client.delete_objects(Bucket=branch.bucket, Delete={"Objects": keys})
        client.delete_bucket(Bucket=branch.bucket)
    except client.exceptions.NoSuchBucket:
        pass
    shutil.rmtree(entry["root"], ignore_errors=True)
    del registry[name]
    _save(source, registry)
    log(f"branch {name} deleted")


def promote(source: LocalCluster, name: str, replicas: int = 2, *, log: Callable[[str], None] = print,
            timeout: float = 600) -> dict[str, Any]:
    """Grow branch ``name`` to ``replicas`` replicas: what ``pulumi up`` does when a branch
    stack's ``pgha:replicas`` is raised.

    The new members join the branch's etcd (the agent's ``member add``), restore from the
    branch's repository (else stream a basebackup), and the first one streaming lets the
    DCS take the spec's synchronous mode (the agent's ``dcs-sync``). Member 1 goes last, as
    the rolling order replaces it last on AWS: restarted with its data, on files that name
    every member (its certificate included).
    """
    registry = _registry(source)
    if name not in registry:
        raise BackupError(f"no branch {name} (pgha branch list)")
    entry = registry[name]
    current = int(entry["values"].get("replicas", 0))
    # Asking for the current count again resumes a promotion that stopped half-way.
    if replicas < max(current, 1):
        raise BackupError(f"branch {name} has {current} replicas; promote raises it (asked: {replicas})")
    grown = {**entry, "values": {**entry["values"], "replicas": replicas}}
    branch = open_branch(source, name, grown)  # validates the grown spec before anything changes
    registry[name] = grown
    _save(source, registry)
    mode = "synchronous" if branch.spec.synchronous else f"asynchronous, rpo {branch.spec.rpo} bytes"
    log(f"branch {name}: {current} -> {replicas} replicas ({mode})")
    head = branch.nodes[0]
    # A running member 1 keeps its instance until its turn (a resumed promotion may find it stopped).
    branch.up(timeout=timeout, log=log, hold=[head.member.name])
    log(f"{head.member.name}: replaced last, as on AWS: a new instance on the grown stack's user-data, same volume")
    branch.replace(head, log=log, timeout=timeout)
    branch.wait_healthy(timeout=timeout)
    return grown
