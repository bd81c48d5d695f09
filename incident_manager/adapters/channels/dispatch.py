"""One object the outbox sends every delivery through, whatever its channel.

Each channel kind is registered under its settings class; `send` picks the channel by the
class of the delivery's settings. `default_dispatcher()` registers webhook, email, Slack, Teams
and PagerDuty, and automated actions (through webhook channels); the HTTP channels share one
HTTP client. Use one dispatcher per process
and `close()` it at shutdown.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, TypeVar

from incident_manager.adapters.channels.action import ActionChannel, ActionSettings
from incident_manager.adapters.channels.base import AttemptResult, Channel, Delivery
from incident_manager.adapters.channels.email import EmailChannel, SmtpSettings
from incident_manager.adapters.channels.http import HttpClient
from incident_manager.adapters.channels.pagerduty import PagerDutyChannel, PagerDutySettings
from incident_manager.adapters.channels.slack import SlackChannel, SlackSettings
from incident_manager.adapters.channels.teams import TeamsChannel, TeamsSettings
from incident_manager.adapters.channels.webhook import WebhookChannel, WebhookSettings

S = TypeVar("S")


class ChannelDispatcher:
    """Routes each delivery to the channel registered for its settings' class."""

    def __init__(self) -> None:
        self._channels: dict[type[Any], Channel[Any]] = {}

    def register(self, settings_type: type[S], channel: Channel[S]) -> None:
        """Send deliveries whose settings are a `settings_type` through `channel`."""
        self._channels[settings_type] = channel

    async def send(self, delivery: Delivery[Any]) -> AttemptResult:
        """One attempt through the delivery's channel; an unknown kind is FAILED."""
        channel = self._channels.get(type(delivery.settings))
        if channel is None:
            return AttemptResult.failed(
                f"no channel can send {type(delivery.settings).__name__} deliveries"
            )
        return await channel.send(delivery)

    async def close(self) -> None:
        """Close every registered channel."""
        for channel in {id(c): c for c in self._channels.values()}.values():
            await channel.close()


def default_dispatcher(
    environ: Mapping[str, str] | None = None, *, http: HttpClient | None = None
) -> ChannelDispatcher:
    """The dispatcher with every channel type: `webhook`, `email`, `slack`, `teams` and
    `pagerduty`. Its `close()` also closes the HTTP client, unless the caller passed its own."""
    client = http or HttpClient()
    dispatcher = ChannelDispatcher() if http is not None else _Owning(client)
    dispatcher.register(WebhookSettings, WebhookChannel(client, environ=environ))
    dispatcher.register(SmtpSettings, EmailChannel(environ=environ))
    dispatcher.register(SlackSettings, SlackChannel(client, environ=environ))
    dispatcher.register(TeamsSettings, TeamsChannel(client, environ=environ))
    dispatcher.register(PagerDutySettings, PagerDutyChannel(client, environ=environ))
    dispatcher.register(ActionSettings, ActionChannel(client, environ=environ))
    return dispatcher


class _Owning(ChannelDispatcher):
    """A dispatcher that also closes the HTTP client its channels share."""

    def __init__(self, client: HttpClient) -> None:
        super().__init__()
        self._client = client

    async def close(self) -> None:
        await super().close()
        await self._client.close()
