"""The JSON API's request and response bodies (``XCreate`` in, ``XPublic`` out).

Every request body derives from ``Body``: text that cannot be stored (NUL, lone surrogates) and non-finite numbers
anywhere in it are refused with 422 before any field is read (see ``tether.checks.inputs``).
"""

from __future__ import annotations

import re
from datetime import datetime
from typing import Annotated, Any

from fastapi import Path, Query
from pydantic import BaseModel, Field, model_validator

from tether.checks.inputs import find_unstorable

# Ids are INTEGER columns: int4 on PostgreSQL (SQLite's reach int64). An id past that names nothing, so a path or
# query id is checked against it (422 for the API, 404 for a page) before the driver sees it and overflows.
MAX_ID = 2**31 - 1
IdPath = Annotated[int, Path(ge=1, le=MAX_ID)]
AfterIdQuery = Annotated[int, Query(ge=0, le=MAX_ID)]
_PLAIN_INT = re.compile(r"-?[0-9]{1,18}")


def plain_int(raw: Any) -> int | None:
    """A form field as an int when it is a plain decimal whole number in ASCII digits, else None.

    ``str.isdigit`` accepts ``²`` and ``٣`` and ``int()`` accepts ``1_0`` and `` +5``; a form number is none of those.
    """
    if isinstance(raw, str) and _PLAIN_INT.fullmatch(raw.strip()):
        return int(raw.strip())
    return None


class Body(BaseModel):
    """A request body: the whole of it passes ``tether.checks.inputs.find_unstorable`` first."""

    @model_validator(mode="before")
    @classmethod
    def _storable(cls, data: Any) -> Any:
        problem = find_unstorable(data)
        if problem is not None:
            raise ValueError(problem)
        return data


class ErrorOut(BaseModel):
    """Every refusal (4xx): what is wrong, and what to do about it."""

    error: str
    fix: str | None = None


class UserPublic(BaseModel):
    id: int
    name: str
    role: str
    active: bool


class UserCreate(Body):
    name: str = Field(max_length=200)
    role: str
    password: str = Field(max_length=1024)


class LabelSchemaIn(Body):
    """A label schema; see ``tether.store.campaigns.normalize_schema`` for the fields and their defaults."""

    kind: str = "pairwise"
    strength: bool | None = None
    aspects: list[str] | None = None
    scale: list[int] | None = None
    flags: list[str] | None = None
    critique: bool | None = None
    rewrite: bool | None = None

    def spec(self) -> dict[str, Any]:
        return {k: v for k, v in self.model_dump().items() if v is not None}


class ProjectCreate(Body):
    name: str = Field(max_length=200)
    description: str = Field("", max_length=5000)
    guidelines: str = ""
    label_schema: LabelSchemaIn = Field(default_factory=LabelSchemaIn)
    overlap: int = 1
    gold_rate: float = 0.0
    assignment_ttl_s: int = 3600


class ProjectPatch(Body):
    description: str | None = Field(None, max_length=5000)
    overlap: int | None = None
    gold_rate: float | None = None
    assignment_ttl_s: int | None = None


class ProjectPublic(BaseModel):
    id: int
    name: str
    description: str
    kind: str | None
    overlap: int
    gold_rate: float
    assignment_ttl_s: int
    guideline_version: int | None
    guidelines: str | None
    schema_version: int | None
    label_schema: dict[str, Any] | None


class GuidelinesIn(Body):
    text: str


class VersionOut(BaseModel):
    version: int


class ItemsPush(Body):
    """Rows of prompts and completions; each one of the shapes in ``tether.store.campaigns.item_row``."""

    items: list[dict[str, Any]]


class ItemsAdded(BaseModel):
    items: int
    duplicates: int
    gold: int
    prompts: int
    completions: int


class CompletionShown(BaseModel):
    position: int  # the completion's item position: answers speak in these
    text: str
    messages: list[Any] | None = None


class TaskPublic(BaseModel):
    assignment_id: int
    item_id: int
    project_id: int
    kind: str
    prompt: dict[str, Any]
    completions: list[CompletionShown]  # in the order shown to this annotator
    shown_order: list[int]
    expires_at: datetime | None
    guideline_version: int | None
    schema_version: int
    label_schema: dict[str, Any]


class JudgmentIn(Body):
    value: dict[str, Any]  # in item positions (see tether.feedback.judgments)
    time_spent_ms: int | None = Field(None, ge=0, le=MAX_ID)  # what the page measured; clamped to the time since assignment
    guideline_version: int | None = Field(None, ge=1, le=MAX_ID)
    schema_version: int | None = Field(None, ge=1, le=MAX_ID)


class JudgmentCreated(BaseModel):
    judgment_id: int
    next: TaskPublic | None = None


class SkipIn(Body):
    reason: str = Field(max_length=500)


class CorrectionIn(Body):
    value: dict[str, Any]


class GoldIn(Body):
    value: dict[str, Any] | None  # null makes the item ordinary again


class TokenOut(BaseModel):
    token: str
