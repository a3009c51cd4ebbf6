"""``pgha``: render node files, and run a stack's cluster on this machine's loopback."""

import argparse
import json
import sys
from pathlib import Path

from .spec import SpecError, build_spec, member_ip
from .spec.stackfile import read_stack_config


def _render(args: argparse.Namespace) -> int:
    from .render import EC2_LAYOUT, NodeContext, render_node, user_data_bytes

    values, region = read_stack_config(args.project_dir, args.stack)
    azs = values.get("availabilityZones") or [f"{region}a", f"{region}b", f"{region}c"]
    spec = build_spec(values, stack=args.stack, region=region, region_azs=azs)
    if not spec.network.creates_vpc:
        print("pgha render: the stack uses existing subnets; member IPs are known only to `pulumi up`",
              file=sys.stderr)
        return 2
    ips = {m.name: member_ip(spec.private_subnet_cidrs[m.az_index], m) for m in spec.members}
    # Offline: the AWS names `pulumi up` creates are shown as placeholders unless given.
    ctx = NodeContext(member_ips=ips, bucket=args.bucket, s3_endpoint=f"s3.{region}.amazonaws.com", s3_region=region,
                      secret_id=args.secret_id, layout=EC2_LAYOUT)
    out = Path(args.out)
    for member in spec.members:
        for f in render_node(spec, member, ctx):
            target = out / member.name / f.path.lstrip("/")
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(f.content)
            target.chmod(f.mode)
        size = len(user_data_bytes(spec, member, ctx))
        print(f"{member.name}: {out / member.name} (user-data {size} bytes of 16384)")
    return 0


def _local(args: argparse.Namespace) -> int:
    from .local.cluster import LocalCluster, LocalClusterError

    cluster = LocalCluster(project_dir=args.project_dir, stack=args.stack, root=args.root,
                           address_prefix=args.addresses, s3_http_port=args.s3_port, s3_tls_port=args.s3_port + 1)
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
    except LocalClusterError as error:
        print(f"pgha local {args.action}: {error}", file=sys.stderr)
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

    local = sub.add_parser("local", help="the stack's cluster on 127.0.1.1-3 with the real daemons")
    local.add_argument("action", choices=("up", "status", "down"))
    local.add_argument("--root", type=Path, default=Path("/srv/pgha-local"), help="where the nodes' files live")
    local.add_argument("--json", action="store_true", help="status as JSON, with a DSN per service port")
    local.add_argument("--addresses", default="127.0.1.", help="address prefix of the members (default 127.0.1.)")
    local.add_argument("--s3-port", type=int, default=9000, help="moto's port; its TLS endpoint is the next one")
    local.add_argument("--timeout", type=float, default=180.0, help="seconds to wait for a healthy cluster")
    local.set_defaults(func=_local)

    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except SpecError as error:
        print(f"pgha: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
