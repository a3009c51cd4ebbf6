"""Files written with their owner and mode from the start, atomically."""

import os
import tempfile

# The agent's own log files: group-readable, for the log shipper (its group owns the directories).
LOG_FILE_MODE = 0o640


def open_log(path: str) -> int:
    """Open ``path`` to append, created ``LOG_FILE_MODE`` whatever the umask: Patroni runs its
    callbacks under its own umask (0077), which would hide the file from the log shipper."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, LOG_FILE_MODE)
    try:
        os.fchmod(fd, LOG_FILE_MODE)
    except OSError:  # another owner's file: as it is
        pass
    return fd


def ensure_dir(path: str, mode: int, uid: int, gid: int) -> None:
    os.makedirs(path, mode=0o755, exist_ok=True)
    st = os.stat(path)
    if (st.st_uid, st.st_gid) != (uid, gid):
        os.chown(path, uid, gid)
    if st.st_mode & 0o7777 != mode:
        os.chmod(path, mode)


def write_atomic(path: str, data: str, uid: int, gid: int, mode: int = 0o600) -> None:
    """Write via a temporary file in the same directory, then rename over the target, so a
    reader never sees a partial file and the content is never readable with looser rights."""
    directory, base = os.path.split(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{base}.", dir=directory)
    try:
        os.fchmod(fd, mode)
        os.fchown(fd, uid, gid)
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    dfd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)

