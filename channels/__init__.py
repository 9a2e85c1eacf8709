"""Provider modules, one per channel, behind the interface in channels/base.py."""

from __future__ import annotations

from channels.api import ApiChannel
from channels.avito import AvitoChannel
from channels.base import Channel
from channels.telegram import TelegramChannel
from channels.viber import ViberChannel
from channels.vk import VkChannel
from channels.whatsapp import WhatsAppChannel

REGISTRY: dict[str, Channel] = {
    c.name: c
    for c in (
        ApiChannel(),
        TelegramChannel(),
        WhatsAppChannel(),
        ViberChannel(),
        VkChannel(),
        AvitoChannel(),
    )
}

__all__ = ["REGISTRY", "Channel"]
