"""The store: schema from migrations, constraints, immutability of judgments."""

from __future__ import annotations

import pytest
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError

from tether.store.db import check_schema, current_revision, head_revision, session_scope, upgrade
from tether.store.tables import Item, Judgment, Project, Prompt, User


def _project_with_item(session):
    project = Project(name="p")
    session.add(project)
    session.flush()
    prompt = Prompt(project_id=project.id, text="hi", content_hash="h1")
    session.add(prompt)
    session.flush()
    item = Item(project_id=project.id, prompt_id=prompt.id, kind="pairwise")
    user = User(name="ann", role="annotator")
    session.add_all([item, user])
    session.flush()
    return project, item, user


def test_schema_is_at_head_after_upgrade(db_url):
    assert current_revision(db_url) == head_revision()
    check_schema(db_url)
    upgrade(db_url)  # running it again is a no-op
    assert current_revision(db_url) == head_revision()


def test_project_names_are_unique(db_url):
    with session_scope(db_url) as session:
        session.add(Project(name="same"))
    with pytest.raises(IntegrityError):
        with session_scope(db_url) as session:
            session.add(Project(name="same"))


def test_foreign_keys_are_enforced(db_url):
    with pytest.raises(IntegrityError):
        with session_scope(db_url) as session:
            session.add(Prompt(project_id=12345, text="orphan", content_hash="x"))
            session.flush()


def test_a_judgment_is_superseded_only_once(db_url):
    with session_scope(db_url) as session:
        _, item, user = _project_with_item(session)
        first = Judgment(item_id=item.id, user_id=user.id, kind="pairwise", value={"choice": "a"})
        session.add(first)
        session.flush()
        session.add(Judgment(item_id=item.id, user_id=user.id, kind="pairwise", value={"choice": "b"}, supersedes_id=first.id))
    with pytest.raises(IntegrityError):
        with session_scope(db_url) as session:
            session.add(Judgment(item_id=item.id, user_id=user.id, kind="pairwise", value={"choice": "tie"}, supersedes_id=first.id))
            session.flush()
    with session_scope(db_url) as session:
        values = [j.value["choice"] for j in session.scalars(select(Judgment).order_by(Judgment.id))]
    assert values == ["a", "b"]
