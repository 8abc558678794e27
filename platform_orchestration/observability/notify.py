"""Telling people: alerts sent to Alertmanager (API v2) or a Slack-compatible webhook, with retries.

A webhook URL is a credential (whoever has it can post), so it is never configured in the
clear: it comes from a secret reference (``env:NAME``, ``file:PATH`` or ``vault:PATH#KEY``)
resolved when the alert is sent, and no message, log line or error names it.

Duplicates: every :class:`Notification` has a ``key`` (a run id, a remedy key). Alertmanager
keeps one alert per label set, and the key is a label, so a resend of the same notification
is the same alert, not a second page. The callers (the sensors) also record what was sent so
a tick evaluated again does not send again.
"""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Protocol

from pydantic import ValidationError

from platform_orchestration.errors import PlatformError, one_line
from platform_orchestration.fleet.model import SecretRef


class NotificationFailed(PlatformError):
    """An alert could not be delivered to its receiver (after the retries, or refused)."""


@dataclass(frozen=True)
class Notification:
    key: str
    alertname: str
    summary: str
    description: str
    severity: str = "warning"  # "page" wakes someone up
    labels: dict[str, str] = field(default_factory=dict)
    at: datetime = field(default_factory=lambda: datetime.now(timezone.utc))


class Receiver(Protocol):
    def describe(self) -> str:
        """Where alerts go, safe to log (never a secret URL)."""
        ...

    def post(self, notification: Notification) -> None:
        """One delivery attempt; raises _Retryable or NotificationFailed."""
        ...


class _Retryable(Exception):
    pass


def _post_json(url: str, payload: object, what: str, timeout: float) -> None:
    request = urllib.request.Request(url, data=json.dumps(payload).encode(), method="POST",
                                     headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            response.read()
    except urllib.error.HTTPError as exc:
        body = one_line(exc.read()[:300].decode(errors="replace"))
        message = f"{what} answered HTTP {exc.code}: {body}"
        if exc.code >= 500 or exc.code == 429:
            raise _Retryable(message) from None
        raise NotificationFailed(message) from None
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise _Retryable(f"{what} could not be reached: {one_line(reason)}") from None


@dataclass(frozen=True)
class AlertmanagerReceiver:
    """Alertmanager's API v2: ``POST /api/v2/alerts``. Alerts are labelled with their
    ``alertname``, ``severity``, ``key`` and the notification's labels; Alertmanager groups,
    silences, routes and deduplicates them."""

    url: str  # e.g. http://alertmanager:9093 (not a secret)
    timeout: float = 10.0

    def describe(self) -> str:
        return f"Alertmanager at {self.url}"

    def post(self, notification: Notification) -> None:
        alert = {
            "labels": {"alertname": notification.alertname, "severity": notification.severity,
                       "key": notification.key, **notification.labels},
            "annotations": {"summary": notification.summary, "description": notification.description},
            "startsAt": notification.at.isoformat(),
        }
        _post_json(self.url.rstrip("/") + "/api/v2/alerts", [alert], self.describe(), self.timeout)


@dataclass(frozen=True)
class WebhookReceiver:
    """A Slack-compatible incoming webhook (``{"text": ...}``; Mattermost, Rocket.Chat and
    Teams' Slack-compatible endpoints take the same). `resolve_url` returns the URL from its
    secret reference, `reference` names that reference in messages."""

    reference: str
    resolve_url: Callable[[], str] = field(repr=False)
    timeout: float = 10.0

    def describe(self) -> str:
        return f"webhook ({self.reference})"

    def post(self, notification: Notification) -> None:
        icon = ":rotating_light:" if notification.severity == "page" else ":warning:"
        labels = " ".join(f"{k}={v}" for k, v in sorted(notification.labels.items()))
        text = f"{icon} *{notification.summary}*\n{notification.description}\n`{labels} key={notification.key}`"
        _post_json(self.resolve_url(), {"text": text}, self.describe(), self.timeout)


def send(receiver: Receiver, notification: Notification, *, attempts: int = 4, backoff: float = 0.5,
         sleep: Callable[[float], None] = time.sleep) -> int:
    """Deliver `notification`, retrying a receiver that is down or answers 5xx/429 up to
    `attempts` times in all (waiting `backoff`, then twice that, ...). Returns the attempts it
    took; raises NotificationFailed when refused (4xx) or out of attempts."""
    last = ""
    for attempt in range(1, attempts + 1):
        try:
            receiver.post(notification)
            return attempt
        except _Retryable as exc:
            last = str(exc)
            if attempt < attempts:
                sleep(backoff * 2 ** (attempt - 1))
    raise NotificationFailed(f"alert {notification.key} not delivered after {attempts} attempts: {last}")


def parse_secret_reference(text: str) -> SecretRef:
    """``env:NAME``, ``file:/abs/path`` or ``vault:PATH#KEY`` as a fleet SecretRef.

    >>> parse_secret_reference("env:SLACK_WEBHOOK_URL").describe()
    'env:SLACK_WEBHOOK_URL'
    >>> parse_secret_reference("vault:secret/data/alerts#slack").describe()
    'vault:secret/data/alerts#slack'
    """
    source, _, rest = text.partition(":")
    try:
        if source == "env" and rest:
            return SecretRef(env=rest)
        if source == "file" and rest.startswith("/"):
            return SecretRef(file=rest)
        if source == "vault" and rest:
            path, _, key = rest.partition("#")
            return SecretRef(vault=path, key=key or None)
    except ValidationError:
        pass
    raise NotificationFailed(f"webhook URL reference {text!r}: expected env:NAME, file:/ABSOLUTE/PATH or "
                             "vault:PATH#KEY (the URL itself is a secret and is never configured in the clear)")
