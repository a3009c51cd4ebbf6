"""The node image, built here: Debian 13's root filesystem with the node package set inside.

The same release, archive and packages an EC2 member has once ``pgha-bootstrap`` has installed
them on Debian's official AMI (``pgha.spec.image``), plus what the AMI itself brings (systemd,
cloud-init). Built with debootstrap from Debian's archive, then apt-get inside the root, and
kept under a content key: it is rebuilt only when the package list, its pins or this recipe
change. Members boot it read-only, each through an overlay of its own (``pgha.local.machine``).
"""

import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Sequence

from ..render.files import APT_PREFERENCES_PATH, apt_preferences
from ..spec import image

DEFAULT_CACHE = Path(os.environ.get("PGHA_IMAGE_CACHE", "/var/cache/pgha/images"))
# What Debian's cloud AMI has that debootstrap's minbase does not.
BASE_PACKAGES: tuple[str, ...] = ("systemd", "systemd-sysv", "dbus", "cloud-init", "udev", "util-linux",
                                  "iproute2", "netbase", "less", "sudo")
# Host tools the build and the members need, by the Debian package that has them.
HOST_TOOLS: dict[str, str] = {"debootstrap": "debootstrap", "systemd-nspawn": "systemd-container",
                              "losetup": "mount", "mkfs.xfs": "xfsprogs"}
# Bumped when the recipe below changes in a way the package list does not show.
RECIPE_VERSION = 2
DEFAULT_MIRROR = "http://deb.debian.org/debian"


class ImageError(RuntimeError):
    """The image could not be built; the message carries the failing step's own words."""


@dataclass(frozen=True)
class Image:
    """A built image: its root filesystem and what was installed in it."""

    key: str
    root: Path
    manifest: dict

    @property
    def versions(self) -> dict[str, str]:
        return self.manifest["versions"]


def missing_host_tools() -> list[str]:
    """Host commands the image and its members need, each with its Debian package."""
    return [f"{tool} (apt-get install {package})" for tool, package in HOST_TOOLS.items() if shutil.which(tool) is None]


def mirrors(sources_dir: Path = Path("/etc/apt")) -> tuple[str, str]:
    """Debian's archive and security archive as this machine's apt reaches them (its proxy or
    mirror), else deb.debian.org."""
    text = ""
    for path in [sources_dir / "sources.list", *sorted((sources_dir / "sources.list.d").glob("*"))]:
        if path.is_file():
            text += path.read_text(errors="replace") + "\n"
    uris = re.findall(r"^\s*URIs:\s*(\S+)", text, re.M) + re.findall(r"^\s*deb\s+(?:\[[^]]*\]\s+)?(\S+)", text, re.M)
    archive = next((u for u in uris if u.rstrip("/").endswith("/debian")), DEFAULT_MIRROR)
    security = next((u for u in uris if u.rstrip("/").endswith("/debian-security")),
                    archive.rstrip("/").removesuffix("/debian") + "/debian-security")
    return archive.rstrip("/"), security.rstrip("/")


def sources(archive: str, security: str) -> str:
    """The image's apt sources: the same suites an EC2 member's AMI lists."""
    return (f"Types: deb\nURIs: {archive}\nSuites: {' '.join(image.DEBIAN_SUITES)}\nComponents: main\n"
            "Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg\n\n"
            f"Types: deb\nURIs: {security}\nSuites: {image.DEBIAN_SECURITY_SUITE}\nComponents: main\n"
            "Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg\n")


def image_key(packages: Sequence[str] = image.NODE_PACKAGES) -> str:
    """What the image is made of, hashed: a change of any part means a new image."""
    recipe = {"release": image.DEBIAN_CODENAME, "suites": [*image.DEBIAN_SUITES, image.DEBIAN_SECURITY_SUITE],
              "base": BASE_PACKAGES, "packages": list(packages), "preferences": apt_preferences(),
              "recipe": RECIPE_VERSION, "arch": os.uname().machine}
    return hashlib.sha256(json.dumps(recipe, sort_keys=True).encode()).hexdigest()[:16]


def cached(cache: Path = DEFAULT_CACHE) -> Image | None:
    """The built image of today's recipe, if there is one."""
    key = image_key()
    manifest = cache / key / "manifest.json"
    if not manifest.is_file():
        return None
    return Image(key, cache / key / "root", json.loads(manifest.read_text()))


class _Progress:
    """One status line at most every few seconds: the step, the time, apt's latest action."""

    def __init__(self, log: Callable[[str], None], every: float = 5.0):
        self.log, self.every, self.began = log, every, time.monotonic()
        self.step, self.latest, self.counts = "", "", {"Get": 0, "Unpacking": 0, "Setting up": 0}
        self._last = 0.0

    def start(self, step: str) -> None:
        self.step, self.latest = step, ""
        self.counts = dict.fromkeys(self.counts, 0)
        self.log(f"image: {step} ({self._elapsed()})")

    def line(self, text: str) -> None:
        for word in self.counts:
            if text.startswith(word):
                self.counts[word] += 1
        if text.startswith(("I: ", "Get:", "Unpacking", "Setting up")):
            self.latest = text.strip()
        now = time.monotonic()
        if self.latest and now - self._last >= self.every:
            self._last = now
            done = ", ".join(f"{v} {k.lower()}" for k, v in self.counts.items() if v)
            self.log(f"image: {self.step} {self._elapsed()}: {self.latest[:90]}" + (f" [{done}]" if done else ""))

    def _elapsed(self) -> str:
        seconds = int(time.monotonic() - self.began)
        return f"{seconds // 60}:{seconds % 60:02d}"


def _run(argv: Sequence[str], progress: _Progress, what: str, *, env: dict[str, str] | None = None) -> list[str]:
    """Run a build step, feeding its output to the progress line; keep the output for errors."""
    lines: list[str] = []
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, errors="replace",
                            env={**os.environ, **(env or {})})
    assert proc.stdout is not None
    for text in proc.stdout:
        lines.append(text.rstrip("\n"))
        progress.line(text)
    if proc.wait() != 0:
        raise ImageError(f"{what} failed (exit {proc.returncode}):\n  " + "\n  ".join(_failure_lines(lines)))
    return lines


def _failure_lines(lines: list[str], tail: int = 12) -> list[str]:
    """apt's and debootstrap's own words: their E:/W: lines and what names a package, else the tail."""
    keep = [ln for ln in lines if re.match(r"^(E:|W:|dpkg: error|Unable to locate|The following packages have unmet|"
                                          r"\s+\S+ : Depends:|Err:|debootstrap: )", ln)]
    return (keep or lines)[-tail:] or ["(no output)"]


def _in_root(root: Path, *argv: str) -> list[str]:
    """A command inside the image being built, in a container of its own (its /proc, /dev), on the
    host's network."""
    return ["systemd-nspawn", "--quiet", "--register=no", "--keep-unit", f"--machine=pgha-image-{os.getpid()}",
            "-D", str(root),
            "--setenv=DEBIAN_FRONTEND=noninteractive", "--setenv=LC_ALL=C.UTF-8", *argv]


def build(cache: Path = DEFAULT_CACHE, *, log: Callable[[str], None] = print, force: bool = False,
          packages: Iterable[str] = image.NODE_PACKAGES) -> Image:
    """The image of today's recipe: cached, else built (debootstrap, then the package set)."""
    packages = tuple(packages)
    missing = missing_host_tools()
    if missing:
        raise ImageError("the image build needs, on this machine:\n  - " + "\n  - ".join(missing))
    key = image_key(packages)
    done = cache / key
    if (done / "manifest.json").is_file() and not force:
        return Image(key, done / "root", json.loads((done / "manifest.json").read_text()))
    began = time.monotonic()
    work = cache / f"{key}.building"
    shutil.rmtree(work, ignore_errors=True)
    root = work / "root"
    root.mkdir(parents=True)
    archive, security = mirrors()
    progress = _Progress(log)
    try:
        progress.start(f"debootstrap {image.DEBIAN_CODENAME} from {archive}")
        _run(["debootstrap", "--variant=minbase", image.DEBIAN_CODENAME, str(root), archive], progress,
             f"debootstrap {image.DEBIAN_CODENAME}")
        (root / "etc/apt/sources.list").unlink(missing_ok=True)
        (root / "etc/apt/sources.list.d").mkdir(parents=True, exist_ok=True)
        (root / "etc/apt/sources.list.d/debian.sources").write_text(sources(archive, security))
        (root / APT_PREFERENCES_PATH.lstrip("/")).parent.mkdir(parents=True, exist_ok=True)
        (root / APT_PREFERENCES_PATH.lstrip("/")).write_text(apt_preferences())
        # As pgha-bootstrap does before installing: no default PostgreSQL cluster on 5432.
        (root / "etc/postgresql-common").mkdir(parents=True, exist_ok=True)
        (root / "etc/postgresql-common/createcluster.conf").write_text("create_main_cluster = false\n")
        install(root, [*BASE_PACKAGES, *packages], progress=progress)
        versions = _versions(root, packages)
        _check_pins(versions)
        _run(_in_root(root, "apt-get", "clean"), progress, "apt-get clean")
        # A booted member makes its own machine id, as a new EC2 instance does, and cloud-init
        # its own SSH host keys: none made here is shared by every member.
        (root / "etc/machine-id").write_text("")
        for host_key in (root / "etc/ssh").glob("ssh_host_*"):
            host_key.unlink()
        manifest = {"key": key, "release": f"Debian {image.DEBIAN_MAJOR} ({image.DEBIAN_CODENAME})",
                    "archive": archive, "security": security, "versions": versions,
                    "built": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                    "seconds": round(time.monotonic() - began, 1)}
        (work / "manifest.json").write_text(json.dumps(manifest, indent=1) + "\n")
        shutil.rmtree(done, ignore_errors=True)
        os.replace(work, done)
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
    log(f"image: built {key} in {manifest['seconds']:.0f}s ({done / 'root'})")
    return Image(key, done / "root", manifest)


def install(root: Path, packages: Sequence[str], *, log: Callable[[str], None] = print,
            progress: _Progress | None = None) -> None:
    """apt-get update and install ``packages`` inside ``root``; apt's own words on failure."""
    progress = progress or _Progress(log)
    progress.start("apt-get update")
    _run(_in_root(root, "apt-get", "update", "-q"), progress, "apt-get update in the image")
    progress.start(f"installing {len(packages)} packages and their dependencies")
    _run(_in_root(root, "apt-get", "install", "-y", "-q", "--no-install-recommends", *packages), progress,
         "apt-get install in the image")


def _versions(root: Path, packages: Sequence[str]) -> dict[str, str]:
    proc = subprocess.run(["chroot", str(root), "dpkg-query", "-W", "-f=${Package} ${Version}\\n", *packages],
                          capture_output=True, text=True)
    versions = dict(line.split(" ", 1) for line in proc.stdout.splitlines() if " " in line)
    absent = [p for p in packages if p not in versions]
    if absent:
        raise ImageError(f"not installed in the image: {', '.join(absent)} ({proc.stderr.strip()})")
    return versions


def _check_pins(versions: dict[str, str]) -> None:
    """Every pinned daemon at the version pgha proved: a pin the archive no longer offers makes
    apt fall back to another version, which is refused here, not found on EC2."""
    off = [f"{p} {versions[p]} (pinned {pin}*)" for p, pin in image.DAEMON_PACKAGES.items()
           if not versions[p].startswith(pin)]
    if off:
        raise ImageError("Debian's archive no longer has the pinned versions: " + "; ".join(off)
                         + " (raise the pins in pgha/spec/image.py once the rehearsal passes on them)")


def prune(cache: Path = DEFAULT_CACHE, keep: str | None = None) -> list[Path]:
    """Remove images of older recipes; returns what was removed."""
    keep = keep or image_key()
    removed = []
    for entry in cache.glob("*") if cache.is_dir() else []:
        if entry.is_dir() and entry.name != keep:
            shutil.rmtree(entry, ignore_errors=True)
            removed.append(entry)
    return removed


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    try:
        built = build(force="--force" in args)
    except ImageError as error:
        print(f"pgha image: {error}", file=sys.stderr)
        return 1
    print(json.dumps({"key": built.key, "root": str(built.root), **built.manifest}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
