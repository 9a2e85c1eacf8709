"""The stored files a reply by e-mail carries as MIME attachments.

An e-mail reply's attachments name our own stored files (``file_id``, crm_store/files.py:
an operator's upload, a generated document). Before the outbox worker sends the reply it
reads them here, as many as the mailbox's ``max_send_attachments_bytes`` allows
(:func:`channels.email.channel.pick_attachments`, in order); a file over the cap, not
stored, or gone goes as its signed link instead (the channel says so in the text).
"""

from __future__ import annotations

from channels.base import OutboundMessage
from channels.email.channel import MailFile, mailbox_settings, pick_attachments
from config.models import ChannelAccount
from crm_store import files
from crm_store.store import Store


async def stored_attachments(
    store: Store, account: ChannelAccount, msg: OutboundMessage
) -> list[MailFile]:
    ids = [a.file_id for a in msg.attachments if a.file_id]
    if not ids:
        return []
    metas = {
        str(m["_id"]): m
        async for m in store["files"].find(
            {"_id": {"$in": ids}, "stored": True}, {"name": 1, "mime_type": 1, "size": 1}
        )
    }
    sizes = {i: int(m.get("size") or 0) for i, m in metas.items()}
    out: list[MailFile] = []
    for file_id in pick_attachments(mailbox_settings(account), msg, sizes):
        data = await files.read(store, file_id)
        if data is None:  # vanished or incomplete: the link goes instead
            continue
        meta = metas[file_id]
        named = next((a.name for a in msg.attachments if a.file_id == file_id and a.name), None)
        out.append(
            MailFile(
                file_id=file_id,
                name=named or str(meta.get("name") or file_id),
                mime_type=str(meta.get("mime_type") or "application/octet-stream"),
                data=data,
            )
        )
    return out
