"""Provider modules, one per channel, behind the interface in channels/base.py."""

from __future__ import annotations

from channels.api import ApiChannel
from channels.avito import AvitoChannel
from channels.base import Channel
from channels.email import EmailChannel
from channels.instagram import InstagramChannel
from channels.mango import MangoChannel
from channels.megafon import MegaFonChannel
from channels.messenger import MessengerChannel
from channels.pbx import PbxChannel
from channels.sms import SmsChannel
from channels.telegram import TelegramChannel
from channels.viber import ViberChannel
from channels.vk import VkChannel
from channels.webchat import WebchatChannel
from channels.whatsapp import WhatsAppChannel
from channels.zadarma import ZadarmaChannel

REGISTRY: dict[str, Channel] = {
    c.name: c
    for c in (
        ApiChannel(),
        TelegramChannel(),
        WhatsAppChannel(),
        ViberChannel(),
        VkChannel(),
        AvitoChannel(),
        EmailChannel(),
        MegaFonChannel(),
        MangoChannel(),
        ZadarmaChannel(),
        PbxChannel(),
        WebchatChannel(),
        SmsChannel(),
        MessengerChannel(),
        InstagramChannel(),
    )
}

__all__ = ["REGISTRY", "Channel"]
