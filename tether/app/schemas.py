"""The JSON API's request and response bodies (``XCreate`` in, ``XPublic`` out).

Every request body derives from ``Body``: text that cannot be stored (NUL, lone surrogates) and non-finite numbers
anywhere in it are refused with 422 before any field is read (see ``tether.inputs``).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel, Field, model_validator

from tether.inputs import find_unstorable


class Body(BaseModel):
    """A request body: the whole of it passes ``tether.inputs.find_unstorable`` first."""

    @model_validator(mode="before")
    @classmethod
    def _storable(cls, data: Any) -> Any:
        problem = find_unstorable(data)
        if problem is not None:
            raise ValueError(problem)
        return data


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
    """A label schema; see ``tether.store.annotation.normalize_schema`` for the fields and their defaults."""

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
    """Rows of prompts and completions; each one of the shapes in ``tether.store.annotation.item_row``."""

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
    value: dict[str, Any]  # in item positions (see tether.feedback)
    time_spent_ms: int | None = None
    guideline_version: int | None = None
    schema_version: int | None = None


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
