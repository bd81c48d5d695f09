"""The paging worker's way out: a stored notification becomes one channel attempt.

`OutboxDispatcher` implements the service layer's `Dispatcher`: it finds the
notification's channel in the configuration in force (a reload applies to
the next attempt), builds that channel's settings and the message from the
content stored with the notification, and reports the attempt's outcome in
the service's terms. `BoundedRetries` is the service's `RetrySchedule` over
this package's backoff.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Mapping
from datetime import timedelta
from typing import Any

from incident_manager.adapters.channels.action import ActionSettings
from incident_manager.adapters.channels.base import (
    Delivery,
    Outcome,
    Recipient,
    page_content_from_dict,
)
from incident_manager.adapters.channels.dispatch import ChannelDispatcher, default_dispatcher
from incident_manager.adapters.channels.email import SmtpSettings
from incident_manager.adapters.channels.pagerduty import PagerDutySettings
from incident_manager.adapters.channels.retry import DEFAULT_POLICY, RetryPolicy, backoff
from incident_manager.adapters.channels.slack import SlackSettings
from incident_manager.adapters.channels.teams import TeamsSettings
from incident_manager.adapters.channels.webhook import WebhookSettings
from incident_manager.domain.paging.actions import ACTION_BODY
from incident_manager.domain.paging.ledger import Notification
from incident_manager.domain.paging.model import (
    Channel,
    EmailChannel,
    PagerDutyChannel,
    PagingConfig,
    SlackChannel,
    TargetKind,
    TeamsChannel,
    WebhookChannel,
)
from incident_manager.service.ports import DeliveryOutcome


def channel_settings(channel: Channel) -> Any:
    """The channel's settings as its sender takes them; None for a type no sender knows."""
    if isinstance(channel, WebhookChannel):
        return WebhookSettings(
            channel_id=channel.id,
            url=channel.url,
            secret_env=channel.secret_env,
            timeout=channel.timeout.total_seconds(),
            headers=dict(channel.headers),
            template=channel.template,
        )
    if isinstance(channel, EmailChannel):
        smtp = channel.smtp
        return SmtpSettings(
            channel_id=channel.id,
            host=smtp.host,
            sender=smtp.from_address,
            port=smtp.port,
            starttls=smtp.starttls or None,
            username=smtp.username,
            password_env=smtp.password_env,
            timeout=smtp.timeout.total_seconds(),
            template=channel.template,
        )
    if isinstance(channel, SlackChannel):
        return SlackSettings(
            channel_id=channel.id,
            url_env=channel.url_env,
            timeout=channel.timeout.total_seconds(),
            template=channel.template,
        )
    if isinstance(channel, TeamsChannel):
        return TeamsSettings(
            channel_id=channel.id,
            url_env=channel.url_env,
            timeout=channel.timeout.total_seconds(),
            template=channel.template,
        )
    if isinstance(channel, PagerDutyChannel):
        return PagerDutySettings(
            channel_id=channel.id,
            routing_key_env=channel.routing_key_env,
            url=channel.url,
            timeout=channel.timeout.total_seconds(),
            template=channel.template,
        )
    return None


class OutboxDispatcher:
    """Sends one attempt of a stored notification through its configured channel."""

    def __init__(
        self,
        config: Callable[[], PagingConfig | None],
        channels: ChannelDispatcher | None = None,
        environ: Mapping[str, str] | None = None,
    ) -> None:
        self._config = config
        self._channels = channels or default_dispatcher(environ)

    async def send(self, notification: Notification) -> DeliveryOutcome:
        config = self._config()
        channel = config.channel(notification.channel_id) if config is not None else None
        if channel is None:
            return DeliveryOutcome(
                sent=False,
                retry=False,
                detail=f"channel {notification.channel_id} is not in the paging configuration"
                " in force (removed by a reload?)",
            )
        settings = channel_settings(channel)
        if settings is None:
            return DeliveryOutcome(
                sent=False, retry=False, detail=f"no sender for channel type {channel.type}"
            )
        if notification.target_kind is TargetKind.ACTION:
            body = notification.content.get(ACTION_BODY)
            if not isinstance(settings, WebhookSettings):
                return DeliveryOutcome(
                    sent=False,
                    retry=False,
                    detail=f"channel {notification.channel_id} is a {channel.type} channel in "
                    "the paging configuration in force; an action needs a webhook",
                )
            if not isinstance(body, str):
                return DeliveryOutcome(
                    sent=False, retry=False, detail="stored action has no rendered body"
                )
            settings = ActionSettings(webhook=settings, body=body)
        try:
            content = page_content_from_dict(notification.content)
        except (KeyError, ValueError, TypeError) as error:
            return DeliveryOutcome(
                sent=False, retry=False, detail=f"stored message is unreadable: {error}"
            )
        recipients: tuple[
            Recipient, ...
        ] = ()  # one per delivery: a partial refusal is no duplicate
        if isinstance(channel, EmailChannel):
            recipients = (
                Recipient(id=notification.user_id or channel.id, address=notification.recipient),
            )
        delivery = Delivery(
            delivery_id=notification.id,
            settings=settings,
            content=content,
            recipients=recipients,
            attempt=max(notification.attempts, 1),
        )
        result = await self._channels.send(delivery)
        return DeliveryOutcome(
            sent=result.outcome is Outcome.SENT,
            retry=result.outcome is Outcome.RETRY,
            detail=result.detail,
            retry_after=result.retry_after,
            status=result.status,
            disable_channel=result.disable_channel,
            response=result.response,
        )

    async def close(self) -> None:
        await self._channels.close()


class BoundedRetries:
    """Exponential backoff with jitter, at most `max_attempts` over `max_age` (retry.py)."""

    def __init__(self, policy: RetryPolicy = DEFAULT_POLICY, rng: random.Random | None = None):
        self.policy = policy
        self.rng = rng or random.Random()

    def delay(self, attempt: int, retry_after: float | None, age: timedelta) -> timedelta | None:
        if attempt >= self.policy.max_attempts:
            return None
        seconds = backoff(attempt, retry_after, self.rng, self.policy)
        if age.total_seconds() + seconds > self.policy.max_age:
            return None
        return timedelta(seconds=seconds)
