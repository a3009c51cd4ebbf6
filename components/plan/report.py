"""A plan as Markdown (the PR comment; also what a terminal shows): what AWS would refuse and
what replaces everything first, then the members, parameters, pauses and cost."""

from .changes import Plan
from .cost import Cost, price_table


def _usd(value: float | None) -> str:
    return "no price" if value is None else f"${value:,.2f}"


def _cost_table(before: Cost, after: Cost) -> list[str]:
    table = price_table()
    lines = [f"Monthly cost, on-demand list prices of {after.region} as of {table.as_of} ({table.source}; "
             "data transfer, NAT and NLB processing, requests and snapshots not counted):", "",
             "| item | before | after |", "|---|---|---|"]
    items = list(dict.fromkeys([li.item for li in before.lines] + [li.item for li in after.lines]))
    old = {li.item: li for li in before.lines}
    new = {li.item: li for li in after.lines}
    for item in items:
        a, b = old.get(item), new.get(item)
        cell_a = f"{_usd(a.monthly_usd)} ({a.quantity})" if a else "-"
        cell_b = f"{_usd(b.monthly_usd)} ({b.quantity})" if b else "-"
        lines.append(f"| {item} | {cell_a} | {cell_b} |")
    delta = after.total_usd - before.total_usd
    lines.append(f"| **total** | **{_usd(before.total_usd)}**{'' if before.complete else ' (incomplete)'} | "
                 f"**{_usd(after.total_usd)}**{'' if after.complete else ' (incomplete)'} ({delta:+,.2f}) |")
    for missing in dict.fromkeys([*before.missing, *after.missing]):
        lines.append(f"\nNo price in the table for {missing}.")
    return lines


def markdown(plan: Plan) -> str:
    out = [f"### `pgha plan`: {plan.cluster}, {plan.base} -> {plan.head}", ""]
    for line in plan.loud:
        out.append(f"> **WARNING: {line}**")
    if plan.loud:
        out.append("")
    if plan.refused:
        out.append("**AWS (or Pulumi) would refuse:**")
        out += [f"- {line}" for line in plan.refused] + [""]
    if plan.order:
        out.append("**Members replaced or restarted, in this order:** " + " -> ".join(
            f"{name} ({next(m.action for m in plan.members if m.name == name)})" for name in plan.order))
    else:
        out.append("**No instance replaced or restarted.**")
    out.append("")
    out += ["| member | what happens | why | files changed in place | apply-config runs | data volume |",
            "|---|---|---|---|---|---|"]
    for m in plan.members:
        volume = m.volume + (" (" + ", ".join(f"{k} {a} -> {b}" for k, (a, b) in m.volume_changes.items()) + ")"
                             if m.volume_changes else "")
        out.append(f"| {m.name} | {m.action} | {'; '.join(m.reasons) or '-'} | {', '.join(m.files) or '-'} | "
                   f"{', '.join(m.actions) or '-'} | {volume or '-'} |")
    out.append("")
    if plan.parameters_reload or plan.parameters_restart:
        out.append("**PostgreSQL parameters:**")
        out += [f"- {k}: {a} -> {b} (reload)" for k, (a, b) in plan.parameters_reload.items()]
        out += [f"- {k}: {a} -> {b} (restart)" for k, (a, b) in plan.parameters_restart.items()]
        if plan.leader_restart == "last":
            out.append("- restart roll: the replicas one at a time, then the leader after a switchover")
        elif plan.leader_restart == "first":
            out.append("- restart roll: the leader first, in place (a lowered primary-bounded parameter), then the "
                       "replicas")
        out.append("")
    out.append(f"**Switchovers expected:** {plan.switchovers}")
    for p in plan.pauses:
        if p.figure:
            out.append(f"- {p.event}: write pause {p.figure.median_s} s median ({p.figure.max_s} s max), "
                       f"as measured for {p.figure.what}")
        else:
            out.append(f"- {p.event}: write pause not measured")
    if not plan.pauses:
        out.append("- no write pause expected")
    out.append("")
    if plan.cluster_changes:
        out += ["**Cluster resources:**", *[f"- {c}" for c in plan.cluster_changes], ""]
    if plan.warnings:
        out += ["**Notes:**", *[f"- {w}" for w in plan.warnings], ""]
    out += _cost_table(plan.cost_before, plan.cost_after)
    return "\n".join(out) + "\n"
