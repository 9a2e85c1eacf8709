"""The ``settings`` of a Messenger or Instagram account, as ``omniroute check-config``
checks them (docs/channels/messenger.md, docs/channels/instagram.md). The channels read
the same keys leniently at run time (``channels/meta.py``)."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints

EnvName = Annotated[str, StringConstraints(pattern=r"^[A-Z_][A-Z0-9_]*$")]
GraphId = Annotated[str, StringConstraints(pattern=r"^[0-9]{1,32}$")]


class MetaSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    # The webhooks' signing secret(s) and the subscription handshake's verify token.
    app_secret_env: EnvName | None = None
    instagram_app_secret_env: EnvName | None = None
    verify_token_env: EnvName | None = None
    # Messenger and Page-linked Instagram: the Page; Instagram login: the IG user.
    page_id: GraphId | None = None
    ig_user_id: GraphId | None = None
    # Instagram only: which login the token comes from.
    login: Literal["facebook", "instagram"] = "facebook"
    # Replies from 24 h to 7 days with the HUMAN_AGENT tag (the app holds the permission).
    human_agent: bool = False
    appsecret_proof: bool = False
    api_base: Annotated[str, StringConstraints(pattern=r"^https?://\S+$")] | None = None
    api_version: Annotated[str, StringConstraints(pattern=r"^v[0-9]+\.[0-9]+$")] | None = None
    timeout_s: float = Field(default=10.0, gt=0, le=120)
    # Routing of comments (config/loader.py checks it for every channel).
    comments: str | None = None
