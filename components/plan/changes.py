"""What a change from one spec to another does to a running stack, decided by the code that does it.

Nothing here restates a rule: instances and volumes follow ``infra.node``'s table of what
pulumi-aws does with each input; user-data and manifests are rendered by ``render`` exactly as
``pulumi up`` uploads them; the actions of a changed file are ``agent.apply_config.plan_actions``;
a parameter's restart is PostgreSQL's own ``context`` (``spec.pgsettings``) and the leader's place
in the roll ``apply_config.PRIMARY_BOUNDED``; the order is ``infra.node.rolling_order``.
"""

import hashlib
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from typing import Any, Mapping

from ..agent.apply_config import PRIMARY_BOUNDED, plan_actions
from ..infra.node import (
    INSTANCE_REPLACED_BY,
    INSTANCE_STOPPED_BY,
    VOLUME_MODIFICATION_INTERVAL_HOURS,
    VOLUME_MODIFIED_BY,
    VOLUME_REPLACED_BY,
    data_volume,
    rolling_order,
)
from ..render import config_manifest, sized_parameters, user_data_bytes
from ..render.context import NodeContext, offline_ec2_context
from ..spec import ClusterSpec, Member
from ..spec.pgsettings import settings
from .cost import Cost, monthly_cost
from .figures import FIGURES, Figure

# Placeholders for what `pulumi up` creates: the same in base and head, so they never differ.
_BUCKET = "BUCKET"
_SECRET = "SECRET-ARN"
_NEWEST_AMI = "the newest official Debian 13 (pgha:amiId unset)"


@dataclass(frozen=True)
class MemberChange:
    """What happens to one member: ``replace`` (a new instance), ``stop-start`` (EC2 stops,
    modifies and starts the same instance), ``create``, ``delete``, ``in-place`` (its
    configuration only) or ``none``."""

    name: str
    action: str
    reasons: tuple[str, ...] = ()
    # The manifest's changed files and the actions apply-config runs for them.
    files: tuple[str, ...] = ()
    actions: tuple[str, ...] = ()
    volume: str = ""  # "", "modify", "replace (empty)", "create (empty)" or "delete"
    volume_changes: Mapping[str, tuple[Any, Any]] = field(default_factory=dict)


@dataclass(frozen=True)
class Pause:
    """One expected write pause, with the bench figure it is taken from."""

    event: str
    figure: Figure | None


@dataclass(frozen=True)
class Plan:
    base: str
    head: str
    cluster: str
    members: tuple[MemberChange, ...]
    order: tuple[str, ...]
    parameters_reload: Mapping[str, tuple[Any, Any]]
    parameters_restart: Mapping[str, tuple[Any, Any]]
    leader_restart: str  # "", "first" (in place) or "last" (after a switchover)
    refused: tuple[str, ...]
    warnings: tuple[str, ...]
    loud: tuple[str, ...]
    pauses: tuple[Pause, ...]
    cluster_changes: tuple[str, ...]
    cost_before: Cost
    cost_after: Cost

    @property
    def switchovers(self) -> int:
        return sum(1 for p in self.pauses if p.figure is not None and p.figure.switchover)

    @property
    def replaced(self) -> tuple[str, ...]:
        return tuple(m.name for m in self.members if m.action in ("replace", "stop-start"))

    def as_dict(self) -> dict[str, Any]:
        return {
            "base": self.base, "head": self.head, "cluster": self.cluster,
            "replaced_in_order": list(self.order),
            "members": [{"name": m.name, "action": m.action, "reasons": list(m.reasons), "files": list(m.files),
                         "actions": list(m.actions), "volume": m.volume,
                         "volume_changes": {k: list(v) for k, v in m.volume_changes.items()}} for m in self.members],
            "parameters": {"reload": {k: list(v) for k, v in self.parameters_reload.items()},
                           "restart": {k: list(v) for k, v in self.parameters_restart.items()},
                           "leader_restart": self.leader_restart},
            "switchovers": self.switchovers,
            "write_pauses": [{"event": p.event, **(p.figure.as_dict() if p.figure else {"measured": False})}
                             for p in self.pauses],
            "refused": list(self.refused), "warnings": list(self.warnings), "loud": list(self.loud),
            "cluster_changes": list(self.cluster_changes),
            "cost": {"before": self.cost_before.as_dict(), "after": self.cost_after.as_dict(),
                     "delta_usd": round(self.cost_after.total_usd - self.cost_before.total_usd, 2)},
        }


def _context(spec: ClusterSpec) -> NodeContext:
    ctx = offline_ec2_context(spec, bucket=_BUCKET, secret_id=_SECRET)
    # infra.node puts each member's volume id in its context; a fixed one per member here.
    return replace(ctx, data_volume_ids={m.name: f"VOLUME-OF-{m.name}" for m in spec.members})


def instance_inputs(spec: ClusterSpec, member: Member, ctx: NodeContext) -> dict[str, Any]:
    """The member's instance inputs named in ``infra.node``'s tables, as comparable values."""
    return {"ami": spec.ami_id or _NEWEST_AMI,
            "user_data": hashlib.sha256(user_data_bytes(spec, member, ctx)).hexdigest()[:12],
            "availability_zone": member.availability_zone, "instance_type": spec.instance_type}


def _manifest_changes(old: Mapping[str, Any], new: Mapping[str, Any]) -> tuple[list[str], list[str]]:
    """(changed paths, apply-config's actions for them) from one manifest to the next."""
    before = {e["path"]: e for e in old["files"]}
    after = {e["path"]: e for e in new["files"]}
    changed = [e for path, e in after.items()
               if path not in before or (before[path]["sha256"], before[path]["on_change"]) != (e["sha256"], e["on_change"])]
    gone = [path for path in before if path not in after]
    return sorted([e["path"] for e in changed] + gone), plan_actions(changed)


def _parameters(base: ClusterSpec, head: ClusterSpec) -> tuple[dict[str, tuple[Any, Any]], dict[str, tuple[Any, Any]], str]:
    old, new = sized_parameters(base), sized_parameters(head)
    known = settings(head.postgres_version)
    reload: dict[str, tuple[Any, Any]] = {}
    restart: dict[str, tuple[Any, Any]] = {}
    for name in sorted(set(old) | set(new)):
        if old.get(name) == new.get(name):
            continue
        setting = known.get(name.lower())
        (restart if setting is None or setting.context == "postmaster" else reload)[name] = (old.get(name), new.get(name))
    leader = ""
    if restart:
        lowered = any(_as_int(restart[n][1]) < _as_int(restart[n][0]) for n in PRIMARY_BOUNDED & set(restart))
        leader = "first" if lowered else "last"
    return reload, restart, leader


def _as_int(value: Any) -> int:
    try:
        return int(value)
    except (TypeError, ValueError):
        return 0


@dataclass(frozen=True)
class LastModification:
    """When the data volumes were last modified, where known (the commit that changed the storage)."""

    commit: str
    at: datetime
    now: datetime


def _volume(base: ClusterSpec, head: ClusterSpec, old_m: Member, new_m: Member, refused: list[str],
            warnings: list[str], last: LastModification | None) -> tuple[str, dict[str, tuple[Any, Any]]]:
    old, new = data_volume(base, old_m), data_volume(head, new_m)
    if old is None and new is None:
        return "", {}
    if old is None:
        return "create (empty)", {}
    if new is None:
        refused.append(f"{new_m.name}: its data volume would be deleted; it is protected (and retained), so "
                       "`pulumi up` refuses to delete it")
        return "delete", {}
    changes = {k: (old[k], new[k]) for k in old if old[k] != new[k]}
    if any(k in VOLUME_REPLACED_BY for k in changes):
        return "replace (empty)", changes
    if not changes:
        return "", {}
    assert all(k in VOLUME_MODIFIED_BY for k in changes), changes
    if new["size"] < old["size"]:
        refused.append(f"{new_m.name}: EBS refuses a size decrease ({old['size']} GiB -> {new['size']} GiB); "
                       "a smaller volume is a new volume and a restore")
    interval = timedelta(hours=VOLUME_MODIFICATION_INTERVAL_HOURS)
    if last is not None and last.now - last.at < interval:
        refused.append(f"{new_m.name}: EBS allows one modification per volume every "
                       f"{VOLUME_MODIFICATION_INTERVAL_HOURS} hours, and commit {last.commit[:12]} changed the "
                       f"storage at {last.at.isoformat()} ({(last.now - last.at).total_seconds() / 3600:.1f} h ago): "
                       f"wait until {(last.at + interval).isoformat()}")
    else:
        since = f" (the storage last changed in commit {last.commit[:12]} at {last.at.isoformat()})" if last else ""
        warnings.append(f"{new_m.name}: EBS allows one modification per volume every "
                        f"{VOLUME_MODIFICATION_INTERVAL_HOURS} hours; it refuses this one if the volume was modified "
                        f"less than that ago{since}")
    return "modify", changes


def plan_change(base: ClusterSpec, head: ClusterSpec, *, base_label: str = "base", head_label: str = "head",
                last_volume_change: LastModification | None = None) -> Plan:
    """The plan of going from ``base`` to ``head`` (both validated specs of the same stack);
    ``last_volume_change``, where known, makes a modification inside EBS's interval refused."""
    ctx_old, ctx_new = _context(base), _context(head)
    old_members = {m.name: m for m in base.members}
    new_members = {m.name: m for m in head.members}
    refused: list[str] = []
    warnings: list[str] = []
    loud: list[str] = []
    changes: dict[str, MemberChange] = {}
    for name, member in new_members.items():
        if name not in old_members:
            changes[name] = MemberChange(name, "create", ("a new member: ENI, instance"
                                                          + (" and an empty data volume" if data_volume(head, member)
                                                             else "") + "; it clones from a running member",),
                                         volume="create (empty)" if data_volume(head, member) else "")
            continue
        old_m = old_members[name]
        before, after = instance_inputs(base, old_m, ctx_old), instance_inputs(head, member, ctx_new)
        differs = [k for k in before if before[k] != after[k]]
        reasons = tuple(f"{k}: {before[k]} -> {after[k]}" for k in differs)
        files, actions = _manifest_changes(config_manifest(base, old_m, ctx_old), config_manifest(head, member, ctx_new))
        volume, volume_changes = _volume(base, head, old_m, member, refused, warnings, last_volume_change)
        if any(k in INSTANCE_REPLACED_BY for k in differs):
            action = "replace"
        elif any(k in INSTANCE_STOPPED_BY for k in differs):
            action = "stop-start"
        else:
            action = "in-place" if files or volume else "none"
        if "availability_zone" in differs:
            loud.append(f"{name} moves from {old_m.availability_zone} to {member.availability_zone}: a new subnet, "
                        "ENI, instance and an EMPTY data volume; it rebuilds from the other members or the repository")
        changes[name] = MemberChange(name, action, reasons, tuple(files), tuple(actions), volume, volume_changes)
    for name in old_members:
        if name not in new_members:
            changes[name] = MemberChange(name, "delete", ("fewer replicas",),
                                         volume="delete" if data_volume(base, old_members[name]) else "")
            if data_volume(base, old_members[name]):
                refused.append(f"{name}: its data volume is protected (and retained): `pulumi up` refuses to "
                               "delete it; unprotect it first (`pulumi state unprotect`) if the member must go")
    members = tuple(changes[m.name] for m in sorted([*head.members, *[old_members[n] for n in old_members
                                                                     if n not in new_members]], key=lambda m: m.index))
    order = tuple(m.name for m in rolling_order(head) if changes[m.name].action in ("replace", "stop-start"))
    moved = [m for m in members if any(r.startswith("availability_zone") for r in m.reasons)]
    if moved and len(moved) == len(base.members):
        loud.insert(0, "EVERY MEMBER IS REPLACED ON A NEW, EMPTY DATA VOLUME: the cluster's data survives only "
                       "through the members not yet replaced and the backup repository")
    if any(changes[n].action == "stop-start" for n in order):
        loud.append("an instance type change is applied by EC2 in place (stop, modify, start): each member is "
                    "down for its restart, one at a time in the order below (MemberReady waits for the member to "
                    "report ready after the restart before the next one stops); on metal the instance store "
                    "comes back empty and the member is rebuilt from a peer")
    reload, restart, leader = _parameters(base, head)
    if restart and len(order) == len(head.members):
        leader = ""  # every member starts again anyway, with the new values: no restart roll
    pauses = _pauses(base, order, changes, leader)
    cluster_changes = []
    if base.nat_gateway_count != head.nat_gateway_count:
        cluster_changes.append(f"NAT gateways: {base.nat_gateway_count} -> {head.nat_gateway_count}")
    if base.availability_zones != head.availability_zones:
        cluster_changes.append(f"availability zones: {', '.join(base.availability_zones)} -> "
                               f"{', '.join(head.availability_zones)} (their subnets are replaced)")
    return Plan(base=base_label, head=head_label, cluster=head.cluster_name, members=members, order=order,
                parameters_reload=reload, parameters_restart=restart, leader_restart=leader,
                refused=tuple(refused), warnings=tuple(warnings), loud=tuple(loud), pauses=tuple(pauses),
                cluster_changes=tuple(cluster_changes), cost_before=monthly_cost(base), cost_after=monthly_cost(head))


def _pauses(base: ClusterSpec, order: tuple[str, ...], changes: Mapping[str, MemberChange], leader: str) -> list[Pause]:
    """The write pauses to expect, each from its bench figure. Member 1 is taken as the primary
    (it is at creation; wherever the primary is, its member hands over the same way)."""
    pauses: list[Pause] = []
    primary = base.members[0].name
    if len(order) >= 3 and len(order) == len(base.members):
        pauses.append(Pause(f"a roll of every member ({', '.join(order)}), one handover of the primary",
                            FIGURES["roll"]))
    else:
        for name in order:
            how = "replaced" if changes[name].action == "replace" else "stopped and started"
            if name == primary:
                pauses.append(Pause(f"{name} {how} while primary: it hands over to its synchronous standby",
                                    FIGURES["primary"]))
            else:
                pauses.append(Pause(f"{name} {how} as a standby", FIGURES["standby"]))
    if leader == "last":
        pauses.append(Pause("restart roll for a parameter: the replicas restart, then the leader after a switchover",
                            FIGURES["switchover"]))
    elif leader == "first":
        pauses.append(Pause("restart roll with a lowered primary-bounded parameter: the leader restarts first, in "
                            "place", None))
    return pauses
