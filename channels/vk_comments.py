"""VK comments under the community's wall posts, photos, videos and market items.

Inbound (the Callback API, same server, confirmation string and secret as messages;
CHANNEL_PROTOCOLS.md §11.3). Each event is ``<prefix>_new|_edit|_restore|_delete``:

=================  ==========  =======================  ==================================
prefix             object      its id / owner fields    link
=================  ==========  =======================  ==================================
``wall_reply``     ``wall``    post_id / post_owner_id  https://vk.com/wall{owner}_{post}?reply={id}
``photo_comment``  ``photo``   photo_id / photo_owner_id  https://vk.com/photo{owner}_{photo}
``video_comment``  ``video``   video_id / video_owner_id  https://vk.com/video{owner}_{video}
``market_comment`` ``market``  item_id / market_owner_id  https://vk.com/product{owner}_{item}
=================  ==========  =======================  ==================================

* ``_new`` → an :class:`InboundMessage` of kind ``comment``: ``provider_id`` is
  ``<object>_comment<owner>_<comment id>`` (VK numbers comments per owner, and the delete
  event may lack the post id), ``post`` the object (id ``<object><owner>_<object id>``,
  its link; VK does not send the post's text), ``parent_id`` the comment it answers
  (``reply_to_comment``), ``thread_id`` ``comment:<post id>:<commenter>`` (one
  conversation per post and commenter), ``reply_to`` the commenter's user id (a private
  reply is a VK message to them). A phone number written in the comment becomes the
  sender's phone (:func:`phone_in`): it joins the commenter's contact.
* ``_edit`` → a :class:`MessageEdit` (VK gives no edit time: applied in arrival order).
* ``_restore`` (a deleted comment put back) → a :class:`MessageEdit` with the restored
  text: crm_store/updates.py lifts the deletion when an edit arrives after it, so the
  comment is shown as not deleted again (its text, unchanged, adds no edit history); and
  the comment itself, stored if we never had it (otherwise a duplicate).
* ``_delete`` (``{owner_id, id, deleter_id | user_id, post_id | photo_id …}``) → a
  :class:`MessageDeletion`; the comment stays stored, marked deleted.
* The community's own comments (``from_id == -group_id``: our public replies, an admin
  writing as the community) are echoes; comments written as another community
  (``from_id < 0``) are not customers and are skipped too.

Outbound (pure; channels/vk.py calls the API): :func:`create_call` — a public reply under
a comment (``wall.createComment`` with ``owner_id``, ``post_id``, ``message``,
``reply_to_comment``, ``from_group`` = the group id, ``guid`` = our message id; the
photo/video/market methods alike); :func:`delete_call` — ``wall.deleteComment`` (or its
photo/video/market twin). VK has no hidden comments: hide/unhide is refused.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import phonenumbers

from channels.base import (
    InboundMessage,
    MessageDeletion,
    MessageEdit,
    OutboundMessage,
    Parsed,
    PostRef,
    Sender,
)
from channels.identity import DEFAULT_REGION
from channels.vk import OK, _attachments, _dict, _int, _meta_int, _text, _time
from config.models import ChannelAccount

CHANNEL = "vk"
# How much of a comment is searched for a phone number.
PHONE_SCAN_CHARS = 2000


@dataclass(frozen=True, slots=True)
class ObjectKind:
    """One kind of VK object people comment on."""

    name: str  # wall, photo, video, market
    id_field: str  # the object's id in the event
    owner_field: str  # its owner in the event (besides ``owner_id``)
    api: str  # the API section: wall, photos, video, market
    api_id: str  # the object's id parameter of <api>.createComment

    def url(self, owner: int, obj: int | None, comment: int | None) -> str:
        if self.name == "wall":
            link = f"https://vk.com/wall{owner}_{obj}"
            return link if comment is None else f"{link}?reply={comment}"
        if self.name == "market":
            return f"https://vk.com/product{owner}_{obj}"
        return f"https://vk.com/{self.name}{owner}_{obj}"


OBJECTS: dict[str, ObjectKind] = {
    "wall_reply": ObjectKind("wall", "post_id", "post_owner_id", "wall", "post_id"),
    "photo_comment": ObjectKind("photo", "photo_id", "photo_owner_id", "photos", "photo_id"),
    "video_comment": ObjectKind("video", "video_id", "video_owner_id", "video", "video_id"),
    "market_comment": ObjectKind("market", "item_id", "market_owner_id", "market", "item_id"),
}
BY_NAME = {k.name: k for k in OBJECTS.values()}
# Our keys: wall_comment-218765432_5821 (a comment), wall-218765432_4410 (the post).
COMMENT_KEY = re.compile(r"(wall|photo|video|market)_comment(-?\d{1,20})_(\d{1,20})")
POST_KEY = re.compile(r"comment:(wall|photo|video|market)(-?\d{1,20})_(\d{1,20}):")


def comment_key(kind: ObjectKind, owner: int, comment: int) -> str:
    return f"{kind.name}_comment{owner}_{comment}"


def _owner(obj: dict[str, Any], kind: ObjectKind, group: int) -> int:
    """The owner of the commented object: ``owner_id``, else the object's own owner
    field, else the community (the Callback API reports the community's own objects)."""
    for key in ("owner_id", kind.owner_field):
        owner = _int(obj.get(key))
        if owner:
            return owner
    return -group


def phone_in(text: str) -> str | None:
    """The first valid phone number written in a comment (people leave one under a post
    to be called back), E.164; it joins the commenter's contact like a phone shared in a
    chat. None when there is none."""
    try:
        for match in phonenumbers.PhoneNumberMatcher(
            text[:PHONE_SCAN_CHARS], DEFAULT_REGION, leniency=phonenumbers.Leniency.VALID
        ):
            return phonenumbers.format_number(match.number, phonenumbers.PhoneNumberFormat.E164)
    except Exception:  # a text the matcher chokes on has no number for us
        return None
    return None


def _comment(
    account: ChannelAccount, group: int, kind: ObjectKind, obj: dict[str, Any]
) -> InboundMessage | None:
    author, cid = _int(obj.get("from_id")), _int(obj.get("id"))
    if author is None or author <= 0 or cid is None or cid <= 0:
        return None  # our own comment (an echo), another community's, or unreadable
    owner = _owner(obj, kind, group)
    target = _int(obj.get(kind.id_field))
    post_id = f"{kind.name}{owner}_{target}" if target else f"{kind.name}{owner}"
    parent = _int(obj.get("reply_to_comment"))
    text = _text(obj)
    meta: dict[str, str | int | bool | None] = {
        "vk_object": kind.name,
        "vk_owner_id": _meta_int(owner),
        "vk_comment_id": _meta_int(cid),
    }
    if target:
        meta["vk_object_id"] = _meta_int(target)
    if parent:
        meta["vk_reply_to_comment"] = _meta_int(parent)
    return InboundMessage(
        channel=CHANNEL,
        account=account.account,
        provider_id=comment_key(kind, owner, cid),
        thread_id=f"comment:{post_id}:{author}",
        sender=Sender(external_user_id=str(author), phone=phone_in(text)),
        text=text,
        sent_at=_time(obj.get("date")),
        attachments=_attachments(obj),
        reply_to=str(author),
        meta=meta,
        kind="comment",
        post=PostRef(id=post_id, url=kind.url(owner, target, cid) if target else None),
        parent_id=comment_key(kind, owner, parent) if parent and parent > 0 else None,
    )


def read(account: ChannelAccount, group: int, event_type: str, obj: dict[str, Any]) -> Parsed:
    """One comment event (``wall_reply_new`` …) of an authenticated delivery."""
    prefix, _, verb = event_type.rpartition("_")
    kind = OBJECTS.get(prefix)
    if kind is None:
        return Parsed(reply=OK)
    if verb == "delete":
        cid = _int(obj.get("id"))
        if cid is None or cid <= 0:
            return Parsed(reply=OK)
        gone = MessageDeletion(
            channel=CHANNEL,
            account=account.account,
            provider_id=comment_key(kind, _owner(obj, kind, group), cid),
        )
        return Parsed(deletions=[gone], reply=OK)
    msg = _comment(account, group, kind, obj)
    if msg is None:
        return Parsed(reply=OK)
    if verb == "new":
        return Parsed(messages=[msg], reply=OK)
    if verb in ("edit", "restore"):
        edit = MessageEdit(
            channel=CHANNEL,
            account=account.account,
            provider_id=msg.provider_id,
            text=msg.text,
            attachments=msg.attachments,
        )
        # A restore carries the whole comment: one we never stored (deleted before the
        # community was connected, or its _new lost) is stored now; otherwise the message
        # is a duplicate and only the edit counts.
        return Parsed(messages=[msg] if verb == "restore" else [], edits=[edit], reply=OK)
    return Parsed(reply=OK)


# --- outbound ----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class CommentRef:
    """A comment as the API names it: its object kind, owner and id."""

    kind: ObjectKind
    owner: int
    comment: int


def parse_key(comment_id: str | None) -> CommentRef | None:
    """Our provider id of a VK comment (``wall_comment-1_5``) → its parts."""
    m = COMMENT_KEY.fullmatch(comment_id or "")
    if m is None:
        return None
    return CommentRef(BY_NAME[m.group(1)], int(m.group(2)), int(m.group(3)))


def post_of(thread_id: str | None) -> tuple[str, int, int] | None:
    """The commented object of a comment conversation's thread
    (``comment:wall-1_4410:611``) → (object kind, owner, object id)."""
    m = POST_KEY.match(thread_id or "")
    return (m.group(1), int(m.group(2)), int(m.group(3))) if m else None


def create_call(msg: OutboundMessage, group: int) -> tuple[str, dict[str, Any]] | None:
    """``<api>.createComment`` and its parameters for a public reply under
    ``msg.comment_id``; None when the message does not name a VK comment and its post."""
    ref, post = parse_key(msg.comment_id), post_of(msg.thread_id)
    if ref is None or post is None or post[0] != ref.kind.name or post[1] != ref.owner:
        return None
    values: dict[str, Any] = {
        "owner_id": ref.owner,
        ref.kind.api_id: post[2],
        "reply_to_comment": ref.comment,
        # wall.createComment takes the group's id; the others a flag.
        "from_group": group if ref.kind.name == "wall" else 1,
        "guid": msg.id,
    }
    if msg.text:
        values["message"] = msg.text
    if msg.attachments:
        values["attachments"] = ",".join(a.file_id or "" for a in msg.attachments)
    return f"{ref.kind.api}.createComment", values


def sent_key(msg: OutboundMessage, response: Any) -> str | None:
    """Our provider id of the comment a createComment call made (its echo has it too)."""
    ref = parse_key(msg.comment_id)
    made = _int(_dict(response).get("comment_id")) if isinstance(response, dict) else None
    made = made if made is not None else _int(response)  # market.createComment: the id
    if ref is None or not made or made <= 0:
        return None
    return comment_key(ref.kind, ref.owner, made)


def delete_call(comment_id: str) -> tuple[str, dict[str, Any]] | None:
    """``<api>.deleteComment`` and its parameters; None: not a VK comment of ours."""
    ref = parse_key(comment_id)
    if ref is None:
        return None
    return f"{ref.kind.api}.deleteComment", {"owner_id": ref.owner, "comment_id": ref.comment}
