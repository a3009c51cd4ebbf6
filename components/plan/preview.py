"""What a reviewer reads first in ``pulumi preview --json``: counts by operation, then every
replace or delete of a stateful resource with Pulumi's reasons, then the raw preview folded.

The document is Pulumi's preview digest (pkg/display/json.go): ``steps`` (each with ``op``,
``urn``, ``oldState``/``newState``, ``diffReasons``, ``replaceReasons``), ``diagnostics`` and
``changeSummary``. Secret values are already masked there ("[secret]") unless the preview ran
with ``--show-secrets``, which the workflow never does.
"""

import json
from pathlib import Path
from typing import Any, Mapping

# Resources whose replacement or deletion loses data, an address or access: the members'
# instances, volumes and ENIs, the backup bucket, the KMS key, the secrets and the private zone.
STATEFUL_TYPES: Mapping[str, str] = {
    "aws:ec2/instance:Instance": "instance",
    "aws:ebs/volume:Volume": "data volume",
    "aws:ec2/networkInterface:NetworkInterface": "ENI (member address)",
    "aws:s3/bucket:Bucket": "backup bucket",
    "aws:s3/bucketV2:BucketV2": "backup bucket",
    "aws:kms/key:Key": "KMS key",
    "aws:secretsmanager/secret:Secret": "secret",
    "aws:route53/zone:Zone": "private zone",
}
# A replacement shows as one "replace" step, and its halves as create-replacement and delete-replaced.
REPLACING_OPS = ("replace", "create-replacement", "delete-replaced")
DESTRUCTIVE_OPS = (*REPLACING_OPS, "delete")
# GitHub refuses a comment over 65,536 characters: the raw preview is cut to fit.
RAW_LIMIT = 50_000


class PreviewError(ValueError):
    """Not a preview digest: one line naming the file and what is wrong."""


def load_preview(path: Path) -> dict[str, Any]:
    try:
        document = json.loads(path.read_text())
    except FileNotFoundError:
        raise PreviewError(f"{path}: no such file") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise PreviewError(f"{path}: not the JSON of `pulumi preview --json`: {error}") from None
    if not isinstance(document, dict) or not isinstance(document.get("steps", []), list):
        raise PreviewError(f"{path}: not the JSON of `pulumi preview --json` (no list of steps)")
    return document


def resource_type(urn: str) -> str:
    """The type token of a URN (``urn:pulumi:stack::project::parent$...$type::name``)."""
    parts = urn.split("::")
    return parts[2].split("$")[-1] if len(parts) >= 4 else ""


def resource_name(urn: str) -> str:
    return urn.split("::")[-1]


def counts(document: Mapping[str, Any]) -> dict[str, int]:
    """Resources by operation: Pulumi's changeSummary, or the steps counted when it is absent."""
    summary = document.get("changeSummary")
    if isinstance(summary, dict) and summary:
        return {str(k): int(v) for k, v in summary.items()}
    found: dict[str, int] = {}
    for step in document.get("steps", []):
        op = step.get("op", "?")
        if op in ("create-replacement", "delete-replaced"):
            continue  # halves of a "replace" step
        found[op] = found.get(op, 0) + 1
    return found


def stateful_changes(document: Mapping[str, Any]) -> list[dict[str, Any]]:
    """One row per stateful resource replaced or deleted: its URN, kind, ops and reasons."""
    rows: dict[str, dict[str, Any]] = {}
    for step in document.get("steps", []):
        op, urn = step.get("op", ""), step.get("urn", "")
        kind = STATEFUL_TYPES.get(resource_type(urn))
        if kind is None or op not in DESTRUCTIVE_OPS:
            continue
        row = rows.setdefault(urn, {"urn": urn, "name": resource_name(urn), "kind": kind, "ops": [],
                                    "replace_reasons": [], "diff_reasons": []})
        row["ops"].append(op)
        for key, into in (("replaceReasons", "replace_reasons"), ("diffReasons", "diff_reasons")):
            for reason in step.get(key) or ():
                if reason not in row[into]:
                    row[into].append(reason)
    return list(rows.values())


def summarize(document: Mapping[str, Any]) -> str:
    """The Markdown a PR comment leads with."""
    out = ["### `pulumi preview`", ""]
    by_op = counts(document)
    order = ["create", "update", "replace", "delete", "same"]
    ops = sorted(by_op, key=lambda o: (order.index(o) if o in order else len(order), o))
    out += ["| operation | resources |", "|---|---|", *[f"| {op} | {by_op[op]} |" for op in ops], ""]
    rows = stateful_changes(document)
    if rows:
        out += [f"**{len(rows)} stateful resource(s) replaced or deleted:**", "",
                "| resource | kind | operation | Pulumi's replace reasons | changed inputs |", "|---|---|---|---|---|"]
        for row in rows:
            op = "delete" if row["ops"] == ["delete"] else "replace"
            out.append(f"| `{row['name']}` | {row['kind']} | **{op}** | {', '.join(row['replace_reasons']) or '-'} | "
                       f"{', '.join(row['diff_reasons']) or '-'} |")
    else:
        out.append("No stateful resource (instance, volume, ENI, bucket, key, secret, zone) is replaced or deleted.")
    errors = [d for d in document.get("diagnostics") or () if d.get("severity") == "error"]
    if errors:
        out += ["", "**Errors:**", *[f"- {' '.join(str(d.get('message', '')).split())}" for d in errors]]
    raw = json.dumps(document, indent=1)
    cut = len(raw) > RAW_LIMIT
    out += ["", "<details><summary>raw preview (JSON)" + (f", first {RAW_LIMIT} characters" if cut else "")
            + "</summary>", "", "```json", raw[:RAW_LIMIT], "```", "", "</details>"]
    return "\n".join(out) + "\n"
