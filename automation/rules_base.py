"""The building blocks every rule model shares (identifiers, the strict base model), kept
apart so that action models living in their own modules can use them."""

from __future__ import annotations

from typing import Annotated

from pydantic import BaseModel, ConfigDict, StringConstraints

IDENT_PATTERN = r"^[a-z0-9][a-z0-9_.-]{0,62}$"
Ident = Annotated[str, StringConstraints(pattern=IDENT_PATTERN)]
EnvName = Annotated[str, StringConstraints(pattern=r"^[A-Z_][A-Z0-9_]*$")]


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)
