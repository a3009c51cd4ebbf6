"""Run a command inside the node image (Debian 13 and its packages), on files the test renders.

A throwaway overlay of the cached image (``pgha.local.image``, built on first use) with the
test's files in its upper layer, entered with systemd-nspawn without booting: the daemons'
own checkers run as EC2 members have them, never the host's versions.
"""

import contextlib
import itertools
import os
import subprocess
import tempfile
from pathlib import Path
from typing import Iterator, Mapping

from pgha.local import image

_runs = itertools.count()


def node_image() -> image.Image:
    return image.build(log=print)


@contextlib.contextmanager
def image_with(files: Mapping[str, str | bytes | tuple[str | bytes, int]]) -> Iterator[Path]:
    """The merged root of the image plus ``files`` (path -> content, or (content, mode)); removed
    after. Content is text, or bytes (the agent's zipapp)."""
    base = Path(tempfile.mkdtemp(prefix="pgha-image-", dir="/var/tmp"))
    upper, work, merged = base / "upper", base / "work", base / "root"
    for part in (upper, work, merged):
        part.mkdir()
    for path, content in files.items():
        data, mode = content if isinstance(content, tuple) else (content, 0o644)
        target = upper / path.lstrip("/")
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data.encode() if isinstance(data, str) else data)
        target.chmod(mode)
    subprocess.run(["mount", "-t", "overlay", "overlay", "-o",
                    f"lowerdir={node_image().root},upperdir={upper},workdir={work}", str(merged)], check=True)
    try:
        yield merged
    finally:
        subprocess.run(["umount", str(merged)], check=True)
        subprocess.run(["rm", "-rf", "--one-file-system", str(base)], check=True)


def run_in(root: Path, script: str, *, netns: str | None = None, timeout: float = 120) -> subprocess.CompletedProcess:
    """``sh -c script`` as root inside ``root`` (its own /proc and /dev; ``netns``'s network if given)."""
    # A machine name of its own: nspawn keeps per-name state under /run/systemd/nspawn.
    argv = ["systemd-nspawn", "--quiet", "--register=no", "--keep-unit", f"--machine=pgha-check-{os.getpid()}-"
            f"{next(_runs)}", "-D", str(root), "--pipe"]
    argv += [f"--network-namespace-path=/run/netns/{netns}"] if netns else ["--private-network"]
    return subprocess.run([*argv, "/bin/sh", "-c", script], capture_output=True, text=True, timeout=timeout,
                          stdin=subprocess.DEVNULL)
