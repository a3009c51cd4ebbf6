"""The branch stack: a cluster whose data is restored from another stack's backups.

Cost-optimised by default (``pgha:stackKind: branch``): one member, a burstable instance, a
single NAT gateway, asynchronous. Its source is a ``pulumi.StackReference`` (``sourceStack``:
the source's ``backupBucket``, ``clusterName`` and ``backupKeyArn`` outputs) or a given
``sourceBucket``/``sourceStanza``. The branch has its own bucket, key and stanza for its own
archive and backups, and read-only access to the source's repository prefix. An encrypted
source (``backup.encryption``) exports ``backupCipherSecretArn``, the secret of its cipher pass
(``sourceCipherSecretArn`` + ``sourceKeyArn`` in the given form): the branch may read that
secret alone; its members fetch the pass at boot, and the one that bootstraps restores with it.

Promote it to the full architecture by setting ``pgha:replicas`` to 2 (and ``instanceType``
to a production size) and running ``pulumi up``: the same component then declares three
members in three AZs; the first member keeps its data volume and the new members are created
from the branch's own repository (Patroni ``create_replica_methods``).
"""

import pulumi

from ..infra import PostgresCluster
from ..spec import ClusterSpec
from .regional import export_outputs


def deploy(spec: ClusterSpec) -> PostgresCluster:
    cluster = PostgresCluster(spec.cluster_name, spec=spec)
    source = cluster.restore_source
    assert source is not None and spec.restore is not None, "a branch spec always has restore (validated)"
    export_outputs(spec, cluster)
    pulumi.export("branchOf", {"bucket": source.bucket, "stanza": source.stanza, "target": spec.restore.target})
    return cluster
