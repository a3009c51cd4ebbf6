"""A program outside the repository that installs pgha declares the same resources.

The repository is built into a wheel, installed into a fresh virtualenv (which sees the test
venv's third-party packages through a .pth file, not the editable pgha), and
``tests/external_program`` is copied to a temporary directory outside the repo and run
under the same mocks. Its resource set must equal the in-repo run of the same args.
"""

import json
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

from infra_mocks import run_program, summary

ROOT = Path(__file__).resolve().parent.parent
TESTS = Path(__file__).resolve().parent
PROGRAM = TESTS / "external_program"


IGNORED = shutil.ignore_patterns(".git", "venv", ".venv", "build", "dist", "*.egg-info", "__pycache__",
                                 ".pytest_cache", ".pgha-local", "rendered")


@pytest.fixture(scope="module")
def installed_python(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, bool]:
    """A python with pgha installed from a wheel of this checkout, and whether that worked.

    The wheel is built from a copy (the shared checkout stays untouched). Building needs the
    build backend from the package index; without it, fall back to the test venv's python
    (the package then comes from the editable install).
    """
    base = tmp_path_factory.mktemp("pgha-wheel")
    source = base / "source"
    shutil.copytree(ROOT, source, ignore=IGNORED)
    wheels = base / "wheels"
    try:
        subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(wheels), str(source)],
                       check=True, cwd=base, capture_output=True, timeout=120)
    except (subprocess.CalledProcessError, subprocess.TimeoutExpired):
        return Path(sys.executable), False
    venv = base / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    python = venv / "bin" / "python"
    site = Path(subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                               check=True, capture_output=True, text=True).stdout.strip())
    wheel = next(wheels.glob("pgha-*.whl"))
    subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(site), str(wheel)],
                   check=True)
    # Third-party dependencies from the test venv; a plain path entry does not load its editable pgha finder.
    (site / "zz-test-deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    return python, True


def test_installed_package_has_templates_and_catalog(installed_python: tuple[Path, bool], tmp_path: Path) -> None:
    python, from_wheel = installed_python
    check = ("import importlib.resources as r, pgha, pathlib;"
             "print(pgha.__file__);"
             "print(r.files('pgha.data').joinpath('instances.yaml').is_file());"
             "print(any(p.is_file() for p in pathlib.Path(str(r.files('pgha.templates'))).rglob('*') "
             "if p.suffix != '.py'))")
    out = subprocess.run([str(python), "-c", check], check=True, capture_output=True, text=True,
                         cwd=tmp_path).stdout.split()
    if from_wheel:
        assert not out[0].startswith(str(ROOT)), out[0]
    assert out[1:] == ["True", "True"]


def test_external_program_matches_in_repo_run(installed_python: tuple[Path, bool], tmp_path: Path) -> None:
    python, from_wheel = installed_python
    import pgha

    assert hasattr(pgha, "PostgresCluster"), \
        "pgha must export PostgresCluster (components/__init__.py: from .infra import PostgresCluster, ...)"
    work = tmp_path / "program"
    shutil.copytree(PROGRAM, work)
    result = tmp_path / "result.json"
    proc = subprocess.run([str(python), "run_under_mocks.py", str(TESTS), str(result)], cwd=work,
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-4000:]
    outside = json.loads(result.read_text())
    if from_wheel:
        assert not outside["pgha_file"].startswith(str(ROOT))

    args = _program_args()
    import pgha.infra

    inside = run_program(lambda: pgha.infra.PostgresCluster("db", args))
    assert [list(r) for r in summary(inside)] == outside["resources"]


def _program_args() -> dict:
    source = (PROGRAM / "__main__.py").read_text()
    start = source.index("ARGS")
    block = source[start:source.index("\n}\n", start) + 2]
    namespace: dict = {}
    exec(block.replace('ARGS: "pgha.PostgresClusterArgs" =', "ARGS ="), namespace)
    return namespace["ARGS"]
