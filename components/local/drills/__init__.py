"""Failover drills on the local cluster: inject a fault under load, measure what a client saw.

A drill runs a writer and a reader the way an application would (one multi-host DSN over every
node's HAProxy, retrying on errors; psycopg with ``prepare_threshold=None``, the workload every
figure in docs/failover.md was measured with), plus a monitor that samples every member
directly. It injects one fault, waits for the cluster to recover (booting a killed machine again
as EC2 restarts an instance; systemd restarts what dies inside), and reports:

* ``rto_s``: fault -> first acknowledged write *sent after* the fault (a reply already in
  flight when the fault hit does not count, field note 15);
* ``max_write_gap_s``: the longest stretch without an acknowledged write around the fault
  (the "write pause" of a switchover or a replica loss);
* ``rpo_rows``: acknowledged rows missing afterwards, read back on the (new) primary;
* ``read_errors``/``write_errors``;
* ``split_brain``: two members acknowledged writes over overlapping time, or two members
  were writable (not in recovery) at the same sampled moment while both answered Patroni's
  ``/primary`` check (i.e. both could be routed writes); ``dual_writable_s`` reports how long
  two members were merely "not in recovery" at once (e.g. a frozen ex-primary thawing, which
  cannot acknowledge anything in strict synchronous mode and is demoted by Patroni);
* ``rejoin_s``: revival (or the fault, when nothing had to be revived) -> the failed member
  streaming from the primary again on its own;
* ``stale_pgbouncer``: a PgBouncer that still advertises a role its PostgreSQL no longer has.

The package by job: ``load`` (the writer, reader and monitor), ``faults`` (the ``s_<scenario>``
injections, ``SCENARIOS``), ``probes`` (what is asked of the cluster), ``analysis`` (pure: the
figures above from the recorded samples, tested offline) and ``run`` (one drill end to end).
"""

from ..health import leader
from .analysis import Attempt, Trial, aggregate, analyse, as_json, split_brain, summary_line
from .faults import ETCD_FAULTS, SCENARIOS, Context, signal_node, start_missing
from .load import Client, Monitor
from .probes import (
    DrillError,
    dynamic_config,
    etcd_leader_node,
    etcd_member_ids,
    etcdctl,
    members,
    node_pids,
    patch_config,
    patroni_request,
    pgbouncer_roles,
)
from .run import run_drill

__all__ = ["SCENARIOS", "ETCD_FAULTS", "DrillError", "run_drill", "summary_line", "aggregate", "analyse",
           "split_brain", "as_json", "Attempt", "Trial", "Context", "Client", "Monitor", "patch_config",
           "dynamic_config", "patroni_request", "start_missing", "signal_node", "leader", "members", "node_pids",
           "etcdctl", "etcd_member_ids", "etcd_leader_node", "pgbouncer_roles"]
