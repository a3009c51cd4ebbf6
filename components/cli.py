"""``pgha``: render node files, and rehearse a stack's cluster on this machine as booted members."""

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

from . import contract
from .local import DEFAULT_PREFIX, DEFAULT_ROOT, DEFAULT_S3_PORT
from .spec import ClusterSpec, SpecError, build_spec
from .spec.stackfile import StackFileError, read_stack_config
from .spec.validate import CLUSTER_NAME_RE, check_bucket_name, check_secret_id, offline_region_azs

PLACEHOLDER_BUCKET = "BUCKET-FROM-PULUMI-UP"
PLACEHOLDER_SECRET = "SECRET-ARN-FROM-PULUMI-UP"


class UsageError(ValueError):
    """A bad flag or path: one line on stderr, exit status 2."""


def _output_dir(out: Path) -> Path:
    """``--out``: a directory that exists or can be made, and is writable; checked before rendering."""
    if out.exists() and not out.is_dir():
        raise UsageError(f"--out {out}: exists and is not a directory")
    existing = next((p for p in (out, *out.parents) if p.exists()), None)
    if existing is None or not existing.is_dir() or not os.access(existing, os.W_OK | os.X_OK):
        raise UsageError(f"--out {out}: {existing or out} is not a writable directory")
    return out


def _render(args: argparse.Namespace) -> int:
    from .render import render_node, user_data_bytes
    from .render.context import offline_ec2_context

    problems = [f"--bucket {args.bucket!r}: {error}" for error in [check_bucket_name(args.bucket)]
                if error and args.bucket != PLACEHOLDER_BUCKET]
    problems += [f"--secret-id {args.secret_id!r}: {error}" for error in [check_secret_id(args.secret_id)]
                 if error and args.secret_id != PLACEHOLDER_SECRET]
    if problems:
        raise UsageError("; ".join(problems))
    out = _output_dir(Path(args.out))
    values, region = read_stack_config(args.project_dir, args.stack)
    spec = build_spec(values, stack=args.stack, region=region,
                      region_azs=offline_region_azs(region, values.get("availabilityZones")))
    if not spec.network.creates_vpc:
        print("pgha render: the stack uses existing subnets; member IPs are known only to `pulumi up`",
              file=sys.stderr)
        return 2
    # Offline: the AWS names `pulumi up` creates are shown as placeholders unless given.
    ctx = offline_ec2_context(spec, bucket=args.bucket, secret_id=args.secret_id)
    # Everything is rendered (and measured) before the first file is written.
    rendered = [(member, render_node(spec, member, ctx), len(user_data_bytes(spec, member, ctx)))
                for member in spec.members]
    for member, files, size in rendered:
        for f in files:
            target = out / member.name / f.path.lstrip("/")
            target.parent.mkdir(parents=True, exist_ok=True)
            if isinstance(f.content, bytes):
                target.write_bytes(f.content)
            else:
                target.write_text(f.content)
            target.chmod(f.mode)
        print(f"{member.name}: {out / member.name} (user-data {size} bytes of 16384)")
    return 0


def _spec_of(values: dict, region: str, stack: str) -> ClusterSpec:
    return build_spec(values, stack=stack, region=region,
                      region_azs=offline_region_azs(region, values.get("availabilityZones")))


def _plan(args: argparse.Namespace) -> int:
    from .plan.base import read_base_config, storage_changed_at
    from .plan.changes import LastModification, plan_change
    from .plan.report import markdown

    base_values, base_region = read_base_config(args.project_dir, args.stack, args.base)
    head_values, head_region = read_stack_config(args.project_dir, args.stack)
    try:
        base = _spec_of(base_values, base_region, args.stack)
    except SpecError as error:
        raise UsageError(f"--base {args.base}: {error}") from None
    head = _spec_of(head_values, head_region, args.stack)
    if base.region != head.region or base.cluster_name != head.cluster_name:
        raise UsageError(f"--base {args.base}: cluster {base.cluster_name} in {base.region}, now {head.cluster_name} "
                         f"in {head.region}: a new region or cluster name is a new stack, not a change")
    changed = storage_changed_at(args.project_dir, args.stack, args.base)
    last = LastModification(changed[0], changed[1], datetime.now(timezone.utc)) if changed else None
    plan = plan_change(base, head, base_label=args.base, head_label="working tree", last_volume_change=last)
    print(json.dumps(plan.as_dict(), indent=1) if args.json else markdown(plan), end="" if not args.json else "\n")
    return 0


def _summarize_preview(args: argparse.Namespace) -> int:
    from .plan.preview import PreviewError, load_preview, summarize

    try:
        print(summarize(load_preview(Path(args.preview))), end="")
    except PreviewError as error:
        raise UsageError(str(error)) from None
    return 0


def _local(args: argparse.Namespace) -> int:
    from .local.cluster import LocalClusterError

    cluster = _local_cluster(args)
    try:
        if args.action == "up":
            seconds = cluster.up(timeout=args.timeout)
            print(f"{cluster.spec.cluster_name} is up and healthy in {seconds:.1f}s")
            _print_status(cluster.status())
        elif args.action == "status":
            status = cluster.status()
            if args.json:
                print(json.dumps(status, indent=2))
            else:
                _print_status(status)
            return 0 if not status["health"] else 3
        elif args.action == "down":
            cluster.down()
        elif args.action == "destroy":
            cluster.destroy()
        elif args.action == "replace":
            if not args.member:
                print("pgha local replace: name the member (e.g. pg-dev-2)", file=sys.stderr)
                return 2
            cluster.up(timeout=args.timeout)  # the nodes of the stack's spec, every member running
            node = next((n for n in cluster.nodes if n.member.name == args.member), None)
            if node is None:
                names = ", ".join(n.member.name for n in cluster.nodes)
                print(f"pgha local replace: no member {args.member!r} (members: {names})", file=sys.stderr)
                return 2
            began = time.monotonic()
            instance_id = cluster.replace(node, wipe_data=args.wipe_data, timeout=max(args.timeout, 900.0))
            print(f"{args.member} replaced by {instance_id} and ready in {time.monotonic() - began:.1f}s")
        elif args.action == "ssh":
            if not args.member:
                print("pgha local ssh: name the member (e.g. pg-dev-1)", file=sys.stderr)
                return 2
            with tempfile.TemporaryDirectory(prefix="pgha-ssh-") as workdir:
                argv = cluster.ssh_argv(args.member, Path(workdir), [args.ssh_command] if args.ssh_command else [])
                return subprocess.call(argv)
    except LocalClusterError as error:
        print(f"pgha local {args.action}: {error}", file=sys.stderr)
        return 1
    return 0


def _drill(args: argparse.Namespace) -> int:
    from .local.cluster import LocalClusterError
    from .local.drills import DrillError, aggregate, as_json, run_drill, summary_line

    cluster = _local_cluster(args)
    log = (lambda line: print(line, file=sys.stderr)) if args.json else print
    results = []
    try:
        for trial in range(1, args.trials + 1):
            result = run_drill(cluster, args.scenario, log=log)
            result["trial"] = trial
            results.append(result)
            if not args.json:
                print(summary_line(result))
    except (DrillError, LocalClusterError) as error:
        print(f"pgha drill {args.scenario}: {error}", file=sys.stderr)
        return 1
    if args.json:
        print(as_json({"scenario": args.scenario, "trials": results, "summary": aggregate(results)}))
    elif args.trials > 1:
        print(json.dumps(aggregate(results)))
    bad = any(r["rpo_rows"] or r["split_brain"] or not r["rejoined"] for r in results)
    return 4 if bad else 0


def _local_cluster(args: argparse.Namespace):
    from .local.cluster import LocalCluster
    from .local.netns import NetnsError

    try:
        return LocalCluster(project_dir=args.project_dir, stack=args.stack, root=args.root,
                            address_prefix=args.addresses, s3_http_port=args.s3_port)
    except NetnsError as error:
        raise SystemExit(f"pgha: {error}") from None


def _image(args: argparse.Namespace) -> int:
    from .local import image

    built: image.Image | None
    if args.action == "build":
        try:
            built = image.build(force=args.force)
        except image.ImageError as error:
            print(f"pgha image build: {error}", file=sys.stderr)
            return 1
    else:
        built = image.cached()
        if built is None:
            print(f"pgha image status: no image of recipe {image.image_key()} yet (pgha image build)", file=sys.stderr)
            return 3
    print(json.dumps({"key": built.key, "root": str(built.root), **built.manifest}, indent=1))
    return 0


def _backup(args: argparse.Namespace) -> int:
    from .local import backups

    cluster = _local_cluster(args)
    try:
        if args.action == "run":
            made = backups.run_backup(cluster, args.type, log=lambda line: print(line, file=sys.stderr))
            print(f"{made['type']} backup {made['label']}: {made['info']['size']} bytes, "
                  f"{made['timestamp']['stop'] - made['timestamp']['start']}s")
        else:
            view = backups.status(cluster)
            print(json.dumps(view, indent=2, default=str) if args.json else backups.format_status(view))
    except backups.BackupError as error:
        print(f"pgha backup {args.action}: {error}", file=sys.stderr)
        return 1
    return 0


def _restore(args: argparse.Namespace) -> int:
    from .local import backups

    try:
        done = backups.restore(_local_cluster(args), args.to, log=lambda line: print(line, file=sys.stderr),
                               timeout=args.timeout)
    except backups.LocalClusterError as error:
        print(f"pgha restore: {error}", file=sys.stderr)
        return 1
    print(f"restored to {done['target']} from backup {done['backup']}: primary on timeline {done['timeline']}")
    return 0


def _branch(args: argparse.Namespace) -> int:
    from .local import branch as branches
    from .local.backups import BackupError
    from .local.cluster import LocalClusterError

    source = _local_cluster(args)
    log = lambda line: print(line, file=sys.stderr)  # noqa: E731
    try:
        if args.action == "create":
            if not args.name or not args.source:
                print("pgha branch create NAME --from CLUSTER [--to TIME|LSN]", file=sys.stderr)
                return 2
            if args.source != source.spec.cluster_name:
                print(f"pgha branch: --from {args.source}: the local cluster here is {source.spec.cluster_name}",
                      file=sys.stderr)
                return 2
            entry = branches.create(source, args.name, args.to, log=log, timeout=args.timeout)
            print(f"branch {args.name} is up on {source.address_prefix}{entry['slot'] * 10 + 1} "
                  f"(from {entry['source']} at {entry['target']})")
        elif args.action == "list":
            rows = branches.list_branches(source)
            if args.json:
                print(json.dumps(rows, indent=2))
            for row in [] if args.json else rows:
                print(f"{row['name']:<16} {row['ip']:<12} {row['state']:<9} tl {row['timeline'] or '-'}  from "
                      f"{row['source']} at {row['target']} (backup {row['backup']}), bucket {row['bucket']}")
        elif args.action == "promote":
            if not args.name:
                print("pgha branch promote NAME [--replicas N]", file=sys.stderr)
                return 2
            entry = branches.promote(source, args.name, args.replicas, log=log, timeout=args.timeout)
            first = entry["slot"] * 10 + 1
            print(f"branch {args.name} runs {args.replicas + 1} members on {source.address_prefix}{first}"
                  f"-{first + args.replicas}")
        else:
            if not args.name:
                print("pgha branch delete NAME", file=sys.stderr)
                return 2
            branches.delete(source, args.name, log=log)
    except (BackupError, LocalClusterError) as error:
        print(f"pgha branch {args.action}: {error}", file=sys.stderr)
        return 1
    return 0


def _print_status(status: dict) -> None:
    print(f"cluster {status['cluster']} (stack {status['stack']}, files under {status['root']})")
    print(f"  {'member':<12} {'ip':<11} {'role':<13} {'state':<10} {'tl':>3} {'lag':>10}")
    for m in status["members"]:
        print(f"  {m['name']:<12} {m['ip']:<11} {m['role']:<13} {m['state']:<10} {m['timeline'] or '-':>3} "
              f"{m['lag_bytes'] if m['lag_bytes'] is not None else '-':>10}")
    for name, svc in status["services"].items():
        print(f"  {name:<20} {svc['multi_host_dsn']}")
    print("  health: " + ("ok" if not status["health"] else "; ".join(status["health"])))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="pgha", description=__doc__)
    parser.add_argument("--project-dir", type=Path, default=Path.cwd(), help="where Pulumi.yaml is (default: .)")
    parser.add_argument("--stack", default="dev", help="the stack whose config to use (default: dev)")
    sub = parser.add_subparsers(dest="command", required=True)

    render = sub.add_parser("render", help="write every node's files for the stack (offline, no AWS calls)")
    render.add_argument("--out", default="rendered", help="output directory (default: rendered/)")
    render.add_argument("--bucket", default="BUCKET-FROM-PULUMI-UP", help="backup bucket name, if known")
    render.add_argument("--secret-id", default="SECRET-ARN-FROM-PULUMI-UP", help="cluster secret ARN, if known")
    render.set_defaults(func=_render)

    plan = sub.add_parser("plan", help="what changing the stack's config from --base does (offline, no AWS calls)")
    plan.add_argument("--base", required=True, metavar="REV|FILE",
                      help="the config to compare with: a git revision (origin/main) or a Pulumi.<stack>.yaml file")
    plan.add_argument("--json", action="store_true", help="the plan as JSON (default: Markdown, for a PR comment)")
    plan.set_defaults(func=_plan)

    preview = sub.add_parser("summarize-preview", help="Markdown summary of `pulumi preview --json` for a reviewer")
    preview.add_argument("preview", metavar="PREVIEW_JSON", help="the file `pulumi preview --json` wrote")
    preview.set_defaults(func=_summarize_preview)

    image = sub.add_parser("image", help="the Debian 13 node image the local members boot (built on first use)")
    image.add_argument("action", choices=("build", "status"))
    image.add_argument("--force", action="store_true", help="build again even if the recipe's image exists")
    image.set_defaults(func=_image)

    # Which local cluster a command acts on: `local`, `drill`, backup, restore and branch.
    cluster_at = argparse.ArgumentParser(add_help=False)
    cluster_at.add_argument("--root", type=Path, default=DEFAULT_ROOT,
                            help="where the members' machines, volumes and keys live")
    cluster_at.add_argument("--addresses", default=DEFAULT_PREFIX,
                            help=f"the members' /24, 10.X.Y. (default {DEFAULT_PREFIX}: members .1-.6, the host .254)")
    cluster_at.add_argument("--s3-port", type=int, default=DEFAULT_S3_PORT,
                            help="moto's port on the host; its TLS endpoint is the next one")

    local = sub.add_parser("local", parents=[cluster_at],
                           help="the stack's members as booted machines of the node image, with the user-data EC2 gets")
    local.add_argument("action", choices=("up", "status", "down", "destroy", "replace", "ssh"),
                       help="down powers the members off and keeps their volumes; destroy removes everything; "
                            "replace MEMBER does to one member what pulumi up does to its instance; ssh MEMBER "
                            "opens a shell as EC2 Instance Connect does (a key pushed for 60 s)")
    local.add_argument("member", nargs="?", help="replace, ssh: the member (pg-dev-2)")
    local.add_argument("--command", dest="ssh_command", metavar="CMD", help="ssh: run CMD instead of a shell")
    local.add_argument("--wipe-data", action="store_true",
                       help="replace: boot the new instance on a blank data volume (metal, a lost EBS volume)")
    local.add_argument("--json", action="store_true", help="status as JSON, with a DSN per service port")
    local.add_argument("--timeout", type=float, default=300.0, help="seconds to wait for a healthy cluster")
    local.set_defaults(func=_local)

    where = argparse.ArgumentParser(add_help=False, parents=[cluster_at])
    where.add_argument("--timeout", type=float, default=600.0, help="seconds to wait for the cluster")

    backup = sub.add_parser("backup", parents=[where], help="pgBackRest backups of the local cluster")
    backup.add_argument("action", choices=("run", "status"))
    backup.add_argument("--type", choices=contract.BACKUP_TYPES, default="full",
                        help="backup type for run (default full)")
    backup.add_argument("--json", action="store_true", help="status as JSON")
    backup.set_defaults(func=_backup)

    restore = sub.add_parser("restore", parents=[where],
                             help="restore the local cluster (all members) to a time, an LSN or latest")
    restore.add_argument("--to", required=True, metavar="TIME|latest|LSN",
                         help="ISO-8601 time with a zone (2025-01-31T12:00:00Z), latest, or an LSN (0/3000060)")
    restore.set_defaults(func=_restore)

    branch = sub.add_parser("branch", parents=[where], help="single-node branches restored from the cluster's backups")
    branch.add_argument("action", choices=("create", "list", "promote", "delete"))
    branch.add_argument("name", nargs="?", help="branch name (its own cluster name and stanza)")
    branch.add_argument("--from", dest="source", metavar="CLUSTER", help="the source cluster (create)")
    branch.add_argument("--to", default="latest", metavar="TIME|latest|LSN", help="restore target (default latest)")
    branch.add_argument("--replicas", type=int, default=2, metavar="N",
                        help="promote: replicas of the grown branch (default 2: three members in three AZs)")
    branch.add_argument("--json", action="store_true", help="list as JSON")
    branch.set_defaults(func=_branch)

    from .local.drills import SCENARIOS

    drill = sub.add_parser("drill", parents=[cluster_at],
                           help="inject a fault into the local cluster under load; measure RTO/RPO")
    drill.add_argument("scenario", choices=tuple(SCENARIOS))
    drill.add_argument("--trials", type=int, default=1, help="how many times (default 1)")
    drill.add_argument("--json", action="store_true", help="every trial as JSON (progress goes to stderr)")
    drill.set_defaults(func=_drill)

    args = parser.parse_args(argv)
    try:
        _check_targets(args)
        return args.func(args)
    except (SpecError, StackFileError, UsageError) as error:
        print(f"pgha: {error}", file=sys.stderr)
        return 2
    except OSError as error:  # --out (or a file under it) not writable after all
        print(f"pgha {args.command}: cannot write {error.filename or args.out}: {error.strerror or error}",
              file=sys.stderr)
        return 2


def _check_targets(args: argparse.Namespace) -> None:
    """A branch's name and the ``--to`` of restore and branch create, checked before any cluster is touched."""
    name = getattr(args, "name", None)
    if args.command == "branch" and name is not None and (not CLUSTER_NAME_RE.fullmatch(name) or len(name) > 24):
        raise UsageError(f"branch name {name!r}: lowercase letters, digits and '-', starting with a letter and "
                         "not ending with '-', at most 24 characters (it is the branch's cluster name and stanza)")
    to = getattr(args, "to", None)
    if to is None or args.command not in ("restore", "branch"):
        return
    from .local.backups import BackupError, check_target

    try:
        check_target(to)
    except BackupError as error:
        raise UsageError(str(error)) from None


if __name__ == "__main__":
    sys.exit(main())
