"""Feedback campaigns in the store: projects, versioned guidelines and label schemas (projects), items (items), the
assignment queue (queue), immutable judgments and their review (judgments), progress (progress). The web app, the
JSON API and the CLI all write through these functions; every write takes a keyword-only ``session``.

Every public function is re-exported here: ``from tether.store import campaigns; campaigns.next_assignment(...)``.
"""

from tether.store.campaigns.items import (
    add_items,
    item_row,
)
from tether.store.campaigns.judgments import (
    adjudicate,
    correct_judgment,
    item_detail,
    mark_gold,
    skip_assignment,
    submit_judgment,
    task_view,
)
from tether.store.campaigns.progress import (
    list_judgments,
    project_progress,
    user_progress,
)
from tether.store.campaigns.projects import (
    DEFAULT_ASPECTS,
    MAX_FLAGS,
    MAX_GUIDELINE_CHARS,
    MAX_RANKED,
    MAX_SKIP_REASON_CHARS,
    SCHEMA_KINDS,
    add_guideline_version,
    add_schema_version,
    check_value,
    completions_for,
    create_project,
    current_guideline,
    current_schema,
    get_project,
    normalize_schema,
    project_kind,
    schema_version,
    update_project,
    web_projects,
)
from tether.store.campaigns.queue import (
    HELD_RETRIES,
    HELD_WAIT_S,
    next_assignment,
    own_assignment,
    pending_assignment,
    recount_open_slots,
    release_overdue,
)

__all__ = ["DEFAULT_ASPECTS", "HELD_RETRIES", "HELD_WAIT_S", "MAX_FLAGS", "MAX_GUIDELINE_CHARS", "MAX_RANKED", "MAX_SKIP_REASON_CHARS", "SCHEMA_KINDS", "add_guideline_version", "add_items", "add_schema_version", "adjudicate", "check_value", "completions_for", "correct_judgment", "create_project", "current_guideline", "current_schema", "get_project", "item_detail", "item_row", "list_judgments", "mark_gold", "next_assignment", "normalize_schema", "own_assignment", "pending_assignment", "project_kind", "project_progress", "recount_open_slots", "release_overdue", "schema_version", "skip_assignment", "submit_judgment", "task_view", "update_project", "user_progress", "web_projects"]
