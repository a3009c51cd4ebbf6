"""The PR comment's summary of `pulumi preview --json`, on recorded previews (tests/fixtures/preview)."""

import json
from pathlib import Path

import pytest

from pgha.cli import main
from pgha.plan.preview import RAW_LIMIT, counts, load_preview, resource_type, stateful_changes, summarize

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "preview"


def test_a_routine_change_touches_nothing_stateful() -> None:
    doc = load_preview(FIXTURES / "parameter.json")
    assert counts(doc) == {"same": 7, "update": 3}
    assert stateful_changes(doc) == []
    text = summarize(doc)
    assert "| update | 3 |" in text and "| same | 7 |" in text
    assert "No stateful resource (instance, volume, ENI, bucket, key, secret, zone) is replaced or deleted." in text


def test_every_stateful_replacement_with_pulumis_reasons() -> None:
    doc = load_preview(FIXTURES / "az-change.json")
    rows = {row["name"]: row for row in stateful_changes(doc)}
    # The subnet is replaced too, but it holds no state: only the member's ENI, volume and instance are listed.
    assert sorted(rows) == ["pg-dev-3-data", "pg-dev-3-eni", "pg-dev-3-instance"]
    assert rows["pg-dev-3-data"]["replace_reasons"] == ["availabilityZone"]
    assert rows["pg-dev-3-eni"]["kind"] == "ENI (member address)"
    assert rows["pg-dev-3-instance"]["ops"] == ["delete-replaced", "replace", "create-replacement"]
    text = summarize(doc)
    assert "**3 stateful resource(s) replaced or deleted:**" in text
    assert "| `pg-dev-3-data` | data volume | **replace** | availabilityZone | availabilityZone |" in text
    # Counts first, then the stateful rows, then the raw preview folded.
    assert text.index("| replace | 4 |") < text.index("pg-dev-3-data") < text.index("<details>")


def test_deletes_without_a_change_summary_and_the_engines_error() -> None:
    doc = load_preview(FIXTURES / "member-removed.json")
    assert counts(doc) == {"same": 1, "delete": 5}  # counted from the steps
    kinds = [(row["name"], row["kind"]) for row in stateful_changes(doc)]
    assert kinds == [("pg-dev-4-instance", "instance"), ("pg-dev-4-data", "data volume"),
                     ("pg-dev-4-eni", "ENI (member address)"), ("pg-dev-4-tls-key", "secret")]
    text = summarize(doc)
    assert "| `pg-dev-4-data` | data volume | **delete** | - | - |" in text
    assert "**Errors:**" in text and "as it is currently marked for protection" in text


def test_the_raw_preview_is_folded_and_cut_to_fit_a_comment() -> None:
    doc = load_preview(FIXTURES / "az-change.json")
    big = {**doc, "steps": doc["steps"] * 20}
    text = summarize(big)
    assert f"raw preview (JSON), first {RAW_LIMIT} characters" in text and len(text) < 65536
    small = summarize(doc)
    assert json.dumps(doc, indent=1) in small and "first" not in small.split("<summary>")[1].split("</summary>")[0]


def test_type_of_a_nested_urn() -> None:
    urn = ("urn:pulumi:dev::pgha::pgha:index:PostgresCluster$pgha:infra:Node$aws:ebs/volume:Volume"
           "::pg-dev-1-data")
    assert resource_type(urn) == "aws:ebs/volume:Volume"
    assert resource_type("not-a-urn") == ""


def test_the_cli_summarizes_and_refuses_what_is_not_a_preview(tmp_path: Path,
                                                              capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["summarize-preview", str(FIXTURES / "az-change.json")]) == 0
    assert capsys.readouterr().out.startswith("### `pulumi preview`")
    (tmp_path / "bad.json").write_text("Previewing update (dev):\n")
    assert main(["summarize-preview", str(tmp_path / "bad.json")]) == 2
    assert "bad.json: not the JSON of `pulumi preview --json`" in capsys.readouterr().err
