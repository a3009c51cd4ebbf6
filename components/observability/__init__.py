"""What monitoring promises, as functions of the spec: the scrape targets of every member and the
alert rules of the cluster (Prometheus' formats), used by the Kubernetes component and by anyone
running their own Prometheus. Nothing here talks to AWS, Kubernetes or Pulumi."""

from .alerts import Alert, cluster_alerts, rule_groups, rules_yaml
from .scrape import JOBS, ScrapeJob, Target, file_sd, prometheus_config, scrape_targets

__all__ = ["Alert", "JOBS", "ScrapeJob", "Target", "cluster_alerts", "file_sd", "prometheus_config", "rule_groups",
           "rules_yaml", "scrape_targets"]
