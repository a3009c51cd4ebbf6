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
from ..infra.restore import RestoreSource
from ..spec import ClusterSpec
from .regional import export_outputs


def restore_source(spec: ClusterSpec) -> RestoreSource:
    """Where the branch's data comes from: a StackReference, or the bucket and stanza given."""
    r = spec.restore
    assert r is not None, "a branch spec always has restore (validated)"
    if r.source_stack:
        source = pulumi.StackReference(r.source_stack)
        return RestoreSource(bucket=source.require_output("backupBucket"),
                             stanza=source.require_output("clusterName"),
                             key_arn=source.get_output("backupKeyArn"),
                             # Exported by an encrypted source only: absent means unencrypted.
                             cipher_secret_arn=source.get_output("backupCipherSecretArn"))
    return RestoreSource(bucket=r.source_bucket, stanza=r.source_stanza, key_arn=r.source_key_arn or None,
                         cipher_secret_arn=r.source_cipher_secret_arn or None)


def deploy(spec: ClusterSpec) -> PostgresCluster:
    source = restore_source(spec)
    cluster = PostgresCluster(spec.cluster_name, spec=spec, restore_source=source)
    export_outputs(spec, cluster)
    pulumi.export("branchOf", {"bucket": source.bucket, "stanza": source.stanza,
                               "target": spec.restore.target if spec.restore else "latest"})
    return cluster
