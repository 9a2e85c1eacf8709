"""E-mail: the channel (``channel.py``), the IMAP client layer (``imap.py``) and the mail
parser (``mime.py`` with ``headers.py``, ``charset.py``, ``tree.py``, ``text.py``,
``auto.py``). See docs/channels/email.md and docs/channels/email-parsing.md."""

from __future__ import annotations

from channels.email.channel import EmailChannel, MailboxSettings

__all__ = ["EmailChannel", "MailboxSettings"]
