"""pgha-node: the node agent every pgha node runs (shipped as the zipapp ``pgha-node.pyz``).

Only what Debian 13's node image provides may be imported (stdlib, python3-psycopg,
python3-boto3, python3-prometheus-client, python3-yaml; pgha.spec.image), and of pgha
only ``pgha.contract``. Run as

    /usr/bin/python3 <bin>/pgha-node.pyz [--node-json PATH] <command> [args]

Commands (one module each, see cli.COMMAND_MODULES):
  secrets             fetch the cluster secret and write the node's secret files
  post-bootstrap      Patroni bootstrap.post_bootstrap hook: roles, extension, auth_query function
  on-role-change      Patroni callback (on_start/on_restart/on_role_change): PgBouncer RECONNECT,
                      pgBackRest stanza-create + check when this node became primary, dcs-sync
  pgbouncer-exporter  Prometheus exporter for PgBouncer's admin console
  pgbackrest-exporter Prometheus exporter for `pgbackrest info`
  backup              take a pgBackRest backup if this member is the one that should (timers)
  bootstrap           Patroni custom bootstrap of every cluster: its restore source, else the newest
                      backup of its own repository, else (no stanza or no backup) initdb
  archive-get-source  restore_command of a branch restoring from an encrypted source repository
  etcd                start this member's etcd: restart, bootstrap the initial cluster, or join
  dcs-ready           Patroni's ExecStartPre: wait until etcd has decided its cluster version
  dcs-sync            bring Patroni's DCS settings (bootstrap.dcs) to this node's spec
  etcd-leadership     keep etcd's raft leader on the node whose loss costs least
  timeline-guard      stop a replica stuck on an old timeline, so that Patroni rewinds it
  apply-config        install this member's changed configuration from the bucket, run what each
                      change asks (reloads, restarts), and on the leader restart pending members
                      one at a time (pgha-config.timer)
  start-node          the bootstrap's last step: node.json's units in order, then its timers
  handover            before this member stops: if it leads, switch over to a healthy standby
                      (PgBouncer paused meanwhile); pgha-handover.service's ExecStop

The node facts come from a JSON file written by the renderer (--node-json, else the
PGHA_NODE_JSON environment variable, else /etc/pgha/node.json). No secret value is ever logged.
"""
