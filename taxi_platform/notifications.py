"""What an alert says and where it goes: Apprise URLs (TAXI_ALERT_URLS), never failing a run or a sensor.

An alert is a title and a few lines a person reads: what failed (run, asset, month or check), the first
line of the error, a check's metadata, and a link to the run in the UI; or which dataset's month is
overdue since when, with a link to the asset. With no URL configured an
alert is only logged. A notifier that fails is logged; the caller goes on.
"""

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime

import dagster as dg
from pydantic import Field

from taxi_platform.redaction import redact, url_scheme

_EXCEPTION_CLASS = re.compile(r"^(?:[A-Za-z_]\w*\.)*\w*(?:Error|Exception|Failure): ")


@dataclass(frozen=True)
class Alert:
    title: str
    facts: dict[str, str] = field(default_factory=dict)  # label -> value, in order
    link: str | None = None

    @property
    def body(self) -> str:
        lines = [f"{label}: {value}" for label, value in self.facts.items()]
        if self.link:
            lines.append(f"Open in Dagster: {self.link}")
        return "\n".join(lines)


def first_line(text: str | None) -> str:
    """The first non-empty line of an error message, without its exception's class name or secrets."""
    lines = [line.strip() for line in redact(text or "").splitlines() if line.strip()]
    return _EXCEPTION_CLASS.sub("", lines[0]) if lines else "(no message)"


class Alerter(dg.ConfigurableResource):
    """Sends alerts to every Apprise URL (Slack, Teams, email over SMTP, ntfy, JSON webhooks, ...)."""

    urls: list[str] = Field(default=[], description="Apprise URLs; empty: alerts are only logged.")
    ui_url: str = Field(default="http://localhost:3000", description="The Dagster UI, for links.")

    def run_link(self, run_id: str) -> str:
        return f"{self.ui_url.rstrip('/')}/runs/{run_id}"

    def asset_checks_link(self, asset_key: dg.AssetKey) -> str:
        """The asset's page in the UI, on its checks."""
        return f"{self.ui_url.rstrip('/')}/assets/{'/'.join(asset_key.path)}?view=checks"

    def send(self, alert: Alert, log) -> bool:
        """Log the alert and deliver it; True when every notifier took it. Never raises."""
        log.warning(f"ALERT {alert.title}\n{alert.body}")
        if not self.urls:
            return False
        try:
            import apprise

            notifier = apprise.Apprise()
            for url in self.urls:
                if not notifier.add(url):
                    log.error(f"alert: an Apprise URL is not valid: {url_scheme(url)}")
            delivered = bool(
                notifier.notify(title=alert.title, body=alert.body, body_format=apprise.NotifyFormat.TEXT)
            )
        except Exception as error:  # a notifier must never fail its caller
            log.error(f"alert not sent: {first_line(str(error))}")
            return False
        if not delivered:
            log.error(f"alert not delivered to every notifier: {alert.title}")
        return delivered


def run_failed(run: dg.DagsterRun, assets: list[str], error: str | None, link: str) -> Alert:
    """`assets`: the asset keys the run was to materialize, sorted."""
    dataset = run.tags.get("dataset")
    month = run.tags.get("dagster/partition") or _range(run.tags)
    what = dataset or (assets[0] + (" and more" if len(assets) > 1 else "") if assets else run.job_name)
    facts = {"Run": f"{run.job_name} ({run.run_id})"}
    if dataset:
        facts["Dataset"] = dataset
    if month:
        facts["Month"] = month
    if assets:
        facts["Assets"] = ", ".join(assets)
    facts["Error"] = first_line(error)
    return Alert(f"taxi_platform: run failed: {' '.join(filter(None, [what, month]))}", facts, link)


def check_failed(
    asset_key: dg.AssetKey,
    check_name: str,
    partition: str | None,
    severity: str,
    metadata: Mapping[str, object],
    link: str | None,
) -> Alert:
    subject = " ".join(filter(None, [asset_key.to_user_string(), partition]))
    facts = {"Check": f"{check_name} ({severity})", "Asset": asset_key.to_user_string()}
    if partition:
        facts["Month"] = partition
    facts.update({name: redact(str(value)) for name, value in metadata.items()})
    return Alert(f"taxi_platform: check failed: {check_name} on {subject}", facts, link)


def dataset_overdue(
    dataset: str,
    asset_key: dg.AssetKey,
    due_month: str,
    due_since: datetime,
    newest_month: str | None,
    link: str,
) -> Alert:
    facts = {
        "Dataset": dataset,
        "Due month": due_month,
        "Due since": f"{due_since:%Y-%m-%d %H:%M %Z}",
        "Newest month loaded": newest_month or "none",
        "Asset": asset_key.to_user_string(),
    }
    return Alert(f"taxi_platform: {dataset} is overdue: {due_month} is not loaded", facts, link)


def tick_failed(kind: str, name: str, error: str | None) -> Alert:
    return Alert(
        f"taxi_platform: {kind} {name} failed",
        {kind.capitalize(): name, "Error": first_line(error)},
    )


def _range(tags: Mapping[str, str]) -> str | None:
    start, end = (
        tags.get("dagster/asset_partition_range_start"),
        tags.get("dagster/asset_partition_range_end"),
    )
    return f"{start}..{end}" if start and end else None
