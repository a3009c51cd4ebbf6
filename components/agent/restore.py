"""Restores from a source repository (a branch, a whole-cluster restore): what `bootstrap` runs when
node.json names one, and `archive-get-source`."""

import argparse
import os
import shlex

from ..contract import NodeFacts, RestoreFacts, agent_argv
from .backup import run_pgbackrest
from .cli_types import Subparsers
from .errors import LOG, PROG, AgentError
from .facts import pgbackrest_argv
from .secrets import check_value, source_cipher_path

# What pgBackRest writes into postgresql.auto.conf for a restore (reset after promotion).
RESTORE_SETTINGS = ("restore_command", "recovery_target", "recovery_target_time", "recovery_target_lsn",
                    "recovery_target_action", "recovery_target_timeline", "recovery_target_inclusive",
                    "recovery_target_xid", "recovery_target_name")
# Settings a restored copy must never take over from its source (field note 16): Patroni
# writes its own postgresql.conf, and these are dropped from the restored postgresql.auto.conf.
SOURCE_SETTINGS = ("archive_command", "archive_mode", "archive_library", "synchronous_standby_names",
                   "synchronous_commit", "primary_conninfo", "primary_slot_name", "listen_addresses", "port",
                   "hba_file", "ident_file", "cluster_name")


def pgbackrest_time(text: str) -> str:
    """ISO-8601 with a zone -> pgBackRest's 'YYYY-MM-DD HH:MM:SS.ffffff+00' (UTC)."""
    import datetime

    try:
        when = datetime.datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise AgentError(f"restore target {text!r} is not an ISO-8601 time")
    if when.tzinfo is None:
        raise AgentError(f"restore target {text!r} has no time zone")
    return when.astimezone(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M:%S.%f+00")


def restore_facts(node: NodeFacts) -> RestoreFacts:
    """node.restore, which only a restoring or branch member has."""
    restore = node.get("restore")
    if not restore:
        raise AgentError("node facts have no restore source (restore is null): nothing to restore from")
    return restore


def source_repo_options(node: NodeFacts) -> list[str]:
    """The restore source's repository as command-line options (never pgbackrest.conf, which is
    this cluster's own). A branch (restore.cipher set) names the source's cipher type too: the
    command line outranks pgbackrest.conf, whose repo1-cipher-type is this cluster's own."""
    r = restore_facts(node)
    options = [f"--stanza={r['stanza']}", f"--repo1-s3-bucket={r['bucket']}", f"--repo1-path={r['path']}"]
    if r.get("cipher"):
        options.append(f"--repo1-cipher-type={r['cipher']}")
    return options


def source_encrypted(node: NodeFacts) -> bool:
    """True for a branch whose source repository is encrypted (its pass comes from SOURCE_CIPHER_FILE)."""
    restore = node.get("restore")
    return restore is not None and restore.get("cipher", "none") != "none"


def source_cipher_env(node: NodeFacts) -> dict[str, str]:
    """PGBACKREST_REPO1_CIPHER_PASS of an encrypted source, read from the file `secrets` wrote;
    {} otherwise. pgBackRest takes the environment over pgbackrest.conf and its include (where
    this cluster's own pass is), and refuses a secure option such as this on the command line."""
    if not source_encrypted(node):
        return {}
    path = source_cipher_path(node)
    try:
        with open(path, encoding="utf-8") as fh:
            value = fh.read().rstrip("\n")
    except OSError as exc:
        raise AgentError(f"the source repository is encrypted but its cipher pass {path} cannot be read "
                         f"({exc.strerror}): '{PROG} secrets' fetches it at boot, see its log")
    return {"PGBACKREST_REPO1_CIPHER_PASS": check_value("source cipher pass", value)}


def source_archive_get_argv(node: NodeFacts, *wal: str, binary: str = "pgbackrest") -> list[str]:
    """pgbackrest archive-get from the restore source's repository (``wal``: segment, destination)."""
    return pgbackrest_argv(node, *source_repo_options(node), f"--pg1-path={node['paths']['pgdata']}",
                           "archive-get", *wal, binary=binary)


def source_restore_command(node: NodeFacts, binary: str = "pgbackrest") -> str:
    """The restore_command a branch recovers with: WAL from the source repository, with the source's
    cipher. pgBackRest would write its own from the restore's command line, but without
    --repo1-cipher-type and without the environment (checked on 2.45), so the branch's own cipher
    from pgbackrest.conf would apply to the source's WAL. An encrypted source: this agent's
    archive-get-source (the pass from its file, into the environment); else pgbackrest
    archive-get with --repo1-cipher-type=none. No value here is a secret."""
    p = node["paths"]
    if source_encrypted(node):
        words = agent_argv(p, "archive-get-source", "--pgbackrest", binary)
    else:
        words = source_archive_get_argv(node, binary=binary)
    # It goes through pgBackRest into postgresql.auto.conf ('...') and then /bin/sh: plain words only.
    unsafe = [w for w in words if shlex.quote(w) != w]
    if unsafe:
        raise AgentError(f"cannot put {unsafe[0]!r} into restore_command (it would need shell quoting)")
    return " ".join(words) + ' %f "%p"'


def restore_argv(node: NodeFacts, binary: str = "pgbackrest") -> list[str]:
    """pgbackrest restore of the source repository into this node's empty data directory.
    The source's bucket, path, stanza and (a branch) cipher type are options of this command only,
    as is the restore_command recovery uses (a branch: see source_restore_command)."""
    r = restore_facts(node)
    argv = [*source_repo_options(node), f"--pg1-path={node['paths']['pgdata']}", "--log-level-console=info"]
    if r.get("cipher"):
        argv.append(f"--recovery-option=restore_command={source_restore_command(node, binary)}")
    if r["type"] != "default":
        target = pgbackrest_time(r["target"]) if r["type"] == "time" else r["target"]
        argv += [f"--type={r['type']}", f"--target={target}", "--target-action=promote"]
    return pgbackrest_argv(node, *argv, "restore", binary=binary)


def scrub_restored_config(pgdata: str) -> list[str]:
    """Keep no setting of the source that could push WAL into its repository or wait for its
    standbys: set the restored postgresql.conf aside (Patroni writes its own) and drop
    SOURCE_SETTINGS from postgresql.auto.conf. Returns what was removed."""
    removed = []
    conf = os.path.join(pgdata, "postgresql.conf")
    if os.path.exists(conf):
        os.replace(conf, os.path.join(pgdata, "postgresql.source.conf"))
        removed.append("postgresql.conf (kept as postgresql.source.conf, not included)")
    auto = os.path.join(pgdata, "postgresql.auto.conf")
    if os.path.exists(auto):
        with open(auto, encoding="utf-8") as fh:
            lines = fh.readlines()
        keep = []
        for line in lines:
            key = line.split("=", 1)[0].strip().lower()
            if key in SOURCE_SETTINGS:
                removed.append(f"postgresql.auto.conf: {key}")
            else:
                keep.append(line)
        with open(auto, "w", encoding="utf-8") as fh:
            fh.writelines(keep)
    return removed


def restore_source(node: NodeFacts, binary: str = "pgbackrest") -> None:
    """Restore node.json's restore source to its target into the empty data directory, then scrub
    the source's settings from the copy (bootstrap's source path)."""
    r = restore_facts(node)
    pgdata = node["paths"]["pgdata"]
    # First: a missing source cipher pass fails here, before pgBackRest touches anything.
    env = source_cipher_env(node)
    LOG.info("restoring %s (bucket %s, %s) to %s into %s", r["stanza"], r["bucket"], r["path"], r["target"], pgdata)
    if env:
        LOG.info("the source repository is encrypted: its cipher pass from %s, in the environment",
                 source_cipher_path(node))
    run_pgbackrest(restore_argv(node, binary=binary), f"restore of {r['stanza']}", env=env)
    for what in scrub_restored_config(pgdata):
        LOG.info("removed from the restored copy: %s", what)


# PostgreSQL aborts recovery on an exit status above 125 (as for "command not found"); 1 to
# 125 would mean "no such WAL file", i.e. the end of the archive, and an early promotion.
ARCHIVE_GET_ABORT = 126


def cmd_archive_get_source(node: NodeFacts, args: argparse.Namespace) -> int:
    """restore_command of a branch restoring from an encrypted source: exec pgbackrest archive-get
    from the source repository with the source's cipher pass in its environment (its exit
    status, output and timing are pgBackRest's own)."""
    if not node.get("restore"):
        LOG.error("node facts have no 'restore': there is no source repository to read WAL from")
        return ARCHIVE_GET_ABORT
    try:
        env = source_cipher_env(node)
    except AgentError as exc:
        LOG.error("%s", exc)
        return ARCHIVE_GET_ABORT
    argv = source_archive_get_argv(node, args.wal, args.destination, binary=args.pgbackrest)
    try:
        os.execvpe(argv[0], argv, {**os.environ, **env})
    except OSError as exc:
        LOG.error("cannot run %s: %s", argv[0], exc.strerror)
    return ARCHIVE_GET_ABORT


def register(sub: Subparsers, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser("archive-get-source", parents=[common],
                       help="restore_command of a branch of an encrypted source",
                       description="pgbackrest archive-get WAL from node.json's restore source, with the "
                                   "source's cipher pass (written by `secrets`) in pgBackRest's environment. "
                                   "Set as restore_command by bootstrap; exits 126 (PostgreSQL "
                                   "aborts recovery) when the pass cannot be read.")
    p.add_argument("wal", help="WAL file name (%%f)")
    p.add_argument("destination", help="where PostgreSQL wants it (%%p)")
    p.add_argument("--pgbackrest", default="pgbackrest", metavar="PATH", help="pgbackrest binary (default: from PATH)")
    p.set_defaults(func=cmd_archive_get_source)
