// pgha's PostgresCluster from TypeScript. `pulumi package add github.com/<org>/pgha@<tag>` generates
// the @pulumi/pgha SDK from the package schema; inputs are the stack config's names (sizeGiB,
// throughputMiBps, ...). tests/test_provider.py reads the literal between the markers, checks its
// keys against the schema and constructs the cluster from it, so keep it plain values.
import * as pgha from "@pulumi/pgha";

const cluster = new pgha.PostgresCluster("orders", /* args */ {
    clusterName: "pg-orders",
    arch: "arm64",
    instanceType: "t4g.medium",
    replicas: 2,
    storage: {kind: "ebs", sizeGiB: 50, iops: 3000, throughputMiBps: 250},
    network: {allowedCidrs: ["10.0.0.0/8"], natGateways: "single"},
    backup: {fullSchedule: "0 1 * * *", retentionDays: 7},
} /* end args */);

export const endpoints = cluster.endpoints;
export const memberIps = cluster.memberIps;
export const appPassword = cluster.appPassword; // a secret
