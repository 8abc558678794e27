"""The step every group of partitioned checks shares: one assessment per partition (a database,
a cluster, a standby), each finding reported on the asset it guards."""

# Like the rest of the Dagster layer, without postponed annotations: Dagster inspects the
# step's parameters (`fleet: FleetResource`) when it is defined, to find its resources.
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Protocol

import dagster as dg

from platform_orchestration.protection import FleetProtection
from platform_orchestration.resources import FleetResource


class Finding(Protocol):
    check: str
    passed: bool
    detail: str


# What an assessment of one partition gives the step: its findings, and the metadata every
# one of its results carries (ids, policy, what could not be read).
Assess = Callable[[FleetProtection, str], tuple[Sequence[Finding], dict[str, str]]]


def listed(unreadable: Sequence[str], limit: int = 20) -> str:
    """What could not be read, for a result's metadata: at most `limit` of them, or "none"."""
    return "; ".join(unreadable[:limit]) or "none"


def partitioned_check_step(*, name: str, description: str, checks: Mapping[str, tuple[str, str]],
                           assets_by_name: Mapping[str, dg.AssetsDefinition],
                           partitions: dg.StaticPartitionsDefinition, assess: Assess,
                           op_tags: Mapping[str, str] | None = None) -> dg.AssetChecksDefinition:
    """A multi-asset check named `name` of `checks` ({check name: (guarded asset, description)}):
    per partition it assesses once through `assess` and yields each selected check's verdict."""
    # Partitioned asset checks are a preview feature of the pinned dagster (1.13.27); we rely on
    # them deliberately (one verdict per partition), so their PreviewWarning is not news.
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Specifying a partitions_def on an AssetCheckSpec",
                                category=dg.PreviewWarning)
        specs = [dg.AssetCheckSpec(check, asset=assets_by_name[asset], description=text, partitions_def=partitions)
                 for check, (asset, text) in checks.items()]

    # can_subset: a job that materializes only some of the guarded assets selects only their checks.
    @dg.multi_asset_check(specs=specs, can_subset=True, name=name, description=description,
                          op_tags=dict(op_tags or {}))
    def step(context: dg.AssetCheckExecutionContext, fleet: FleetResource) -> Iterator[dg.AssetCheckResult]:
        with fleet.protection() as protection:
            findings, metadata = assess(protection, context.partition_key)
        by_check = {finding.check: finding for finding in findings}
        for spec in specs:
            if spec.key not in context.selected_asset_check_keys:
                continue
            finding = by_check[spec.name]
            yield dg.AssetCheckResult(asset_key=spec.asset_key, check_name=spec.name, passed=finding.passed,
                                      severity=dg.AssetCheckSeverity.ERROR, description=finding.detail,
                                      metadata=metadata)

    return step
