"""The dispatcher sends each delivery through the channel registered for its settings."""

from __future__ import annotations

from dataclasses import dataclass

from incident_manager.adapters.channels.base import AttemptResult, Channel, Delivery, Outcome
from incident_manager.adapters.channels.dispatch import ChannelDispatcher, default_dispatcher
from incident_manager.adapters.channels.email import EmailChannel, SmtpSettings
from incident_manager.adapters.channels.webhook import WebhookChannel, WebhookSettings
from tests.support.pages import page


@dataclass(frozen=True)
class PagerSettings:
    channel_id: str


class RecordingChannel(Channel[PagerSettings]):
    """A fake channel: says SENT and remembers what it was given."""

    def __init__(self) -> None:
        self.sent: list[str] = []
        self.closed = False

    async def send(self, delivery: Delivery[PagerSettings]) -> AttemptResult:
        self.sent.append(delivery.delivery_id)
        return AttemptResult.sent("fake")

    async def close(self) -> None:
        self.closed = True


async def test_a_delivery_goes_to_the_channel_of_its_settings_class() -> None:
    dispatcher = ChannelDispatcher()
    fake = RecordingChannel()
    dispatcher.register(PagerSettings, fake)
    result = await dispatcher.send(Delivery("dlv-1", PagerSettings("pager"), page()))
    assert result.outcome is Outcome.SENT
    assert fake.sent == ["dlv-1"]
    await dispatcher.close()
    assert fake.closed


async def test_a_delivery_no_channel_can_send_is_failed() -> None:
    dispatcher = default_dispatcher({})
    try:
        result = await dispatcher.send(Delivery("dlv-1", PagerSettings("pager"), page()))
    finally:
        await dispatcher.close()
    assert result.outcome is Outcome.FAILED
    assert result.detail == "no channel can send PagerSettings deliveries"


def test_the_default_dispatcher_knows_webhook_and_email() -> None:
    dispatcher = default_dispatcher({})
    channels = dispatcher._channels  # the registry is what this test is about
    assert isinstance(channels[WebhookSettings], WebhookChannel)
    assert isinstance(channels[SmtpSettings], EmailChannel)
