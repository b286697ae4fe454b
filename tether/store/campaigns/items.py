"""Campaign items: the prompts and completions an admin or a pipeline pushes, deduplicated by content."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from tether.checks.inputs import find_unstorable
from tether.data.canonical import is_messages, messages_text
from tether.data.formats import FORMAT_KEYS, SkipRecord, detect_format, parse_record
from tether.data.records import content_hash
from tether.errors import TetherError
from tether.store.campaigns.projects import check_value, completions_for, current_schema
from tether.store.db import audit
from tether.store.tables import Completion, Item, ItemCompletion, Project, Prompt


def _content(value: Any, what: str) -> tuple[str, list[Any] | None]:
    """(text, messages) of a prompt or completion given as a string or a list of chat messages."""
    if isinstance(value, str):
        return value, None
    if is_messages(value):
        return messages_text(value), value
    raise ValueError(f"{what} must be text or a list of {{role, content}} messages")


def item_row(record: dict[str, Any]) -> dict[str, Any]:
    """One upload record as ``{"prompt", "completions": [{"content", "model", "gen_settings"}], ...}``.

    Unlabeled shapes: ``{"prompt", "completions": [...]}`` (each a string, messages, or ``{"text" | "messages",
    "model", "gen_settings"}``) and ``{"prompt", "completion"}`` (one completion). Every format the importer
    reads (``tether.data.parse_record``: TRL and HH-RLHF pairs, chosen first; PandaLM; rankings;
    ratings) is accepted too, its labels left out: a campaign collects fresh judgments. Optional:
    ``external_id``, ``gold`` (a judgment value in item positions), ``meta``.
    """
    if not isinstance(record, dict):
        raise ValueError("expected a JSON object")
    problem = find_unstorable(record)
    if problem is not None:
        raise ValueError(problem)
    keys = record.keys()
    external_id = record.get("external_id", record.get("id"))
    if "completions" in keys and not keys & {"ranking", "comparisons", "preference"}:
        prompt, completions = record.get("prompt"), record["completions"]
        if not isinstance(completions, list) or not completions:
            raise ValueError("'completions' must be a non-empty list")
    elif "completion" in keys and not keys & {"ratings", "rating", "label"}:
        prompt, completions = record.get("prompt"), [record["completion"]]
    else:
        fmt = detect_format(record)
        if fmt is None or fmt == "prompts":
            raise ValueError(f"expected prompt and completions; known shapes: {{prompt, completions}}, {{prompt, completion}}, {FORMAT_KEYS}")
        try:
            entry = parse_record(fmt, record)
        except SkipRecord as exc:
            raise ValueError(str(exc) or "the completions are identical") from None
        prompt, completions = entry.prompt, entry.completions
        external_id = external_id if external_id is not None else entry.external_id
    if prompt is None:
        raise ValueError("missing 'prompt'")
    out_completions = []
    for index, completion in enumerate(completions):
        model, settings = None, {}
        if isinstance(completion, dict) and not {"role", "content"} <= completion.keys():
            model, settings = completion.get("model"), completion.get("gen_settings") or {}
            completion = completion.get("messages", completion.get("text"))
        _content(completion, f"completion {index + 1}")
        out_completions.append({"content": completion, "model": model, "gen_settings": settings})
    _content(prompt, "prompt")
    return {
        "prompt": prompt,
        "completions": out_completions,
        "external_id": None if external_id is None else str(external_id)[:200],
        "gold": record.get("gold"),
        "meta": record.get("meta") if isinstance(record.get("meta"), dict) else {},
    }


def add_items(
    session: Session,
    *,
    project: Project,
    rows: Sequence[dict[str, Any]],
    where: Sequence[str] | None = None,
    max_text_chars: int = 200_000,
    max_items: int = 50_000,
    actor: str | None = None,
) -> dict[str, int]:
    """Make items from rows of prompts and completions (see ``item_row``); all or nothing.

    Prompts and completions are deduplicated by content within the project, and an item with the same prompt
    and the same completions in the same order as an existing one is counted as a duplicate, not added twice.
    ``where`` names each row in error messages (e.g. ``file.jsonl:12``). Returns counts.
    """
    if len(rows) > max_items:
        raise TetherError(f"{len(rows):,} items in one upload; the limit is {max_items:,}", fix="split the file into smaller uploads")
    schema = current_schema(session, project.id).spec
    kind = schema["kind"]
    fewest, most = completions_for(kind)
    labels = list(where) if where is not None else [f"item {i}" for i in range(1, len(rows) + 1)]
    parsed = []
    for label, record in zip(labels, rows):
        try:
            row = item_row(record)
        except ValueError as exc:
            raise TetherError(f"{label}: {exc}", fix="see the upload formats on the project page or in `tether.client` docs") from None
        n = len(row["completions"])
        if not fewest <= n <= most:
            want = str(fewest) if fewest == most else f"{fewest}..{most}"
            raise TetherError(f"{label}: a {kind} project needs {want} completions per item, this row has {n}", fix="check the file matches the project's kind")
        for what, content in [("prompt", row["prompt"])] + [(f"completion {i + 1}", c["content"]) for i, c in enumerate(row["completions"])]:
            size = len(_content(content, what)[0])
            if size > max_text_chars:
                raise TetherError(f"{label}: the {what} has {size:,} characters; the limit is {max_text_chars:,}", fix="shorten it or leave that row out")
        if row["gold"] is not None:
            try:
                row["gold"] = check_value(schema, row["gold"], n, max_text_chars)
            except TetherError as exc:
                raise TetherError(f"{label}: gold answer: {exc.message}", fix=exc.fix) from None
        parsed.append(row)

    # ALGO LOGIC: get-or-create prompts and completions by content hash, then items, in three bulk flushes.
    prompt_ids = dict(session.execute(select(Prompt.content_hash, Prompt.id).where(Prompt.project_id == project.id)).all())
    new_prompts: dict[str, Prompt] = {}
    for row in parsed:
        row["prompt_hash"] = content_hash(row["prompt"])
        if row["prompt_hash"] not in prompt_ids and row["prompt_hash"] not in new_prompts:
            text, messages = _content(row["prompt"], "prompt")
            new_prompts[row["prompt_hash"]] = Prompt(project_id=project.id, text=text, messages=messages, content_hash=row["prompt_hash"])
    session.add_all(new_prompts.values())
    session.flush()
    prompt_ids.update({h: p.id for h, p in new_prompts.items()})

    touched = {prompt_ids[row["prompt_hash"]] for row in parsed}
    completion_ids = {
        (pid, h): cid
        for pid, h, cid in session.execute(
            select(Completion.prompt_id, Completion.content_hash, Completion.id).where(Completion.prompt_id.in_(touched))
        ).all()
    } if touched else {}
    new_completions: dict[tuple[int, str], Completion] = {}
    for row in parsed:
        pid = prompt_ids[row["prompt_hash"]]
        for comp in row["completions"]:
            comp["key"] = (pid, content_hash(comp["content"]))
            if comp["key"] not in completion_ids and comp["key"] not in new_completions:
                text, messages = _content(comp["content"], "completion")
                new_completions[comp["key"]] = Completion(
                    prompt_id=pid, text=text, messages=messages, content_hash=comp["key"][1],
                    model=comp["model"], gen_settings=comp["gen_settings"],
                )
    session.add_all(new_completions.values())
    session.flush()
    completion_ids.update({key: c.id for key, c in new_completions.items()})

    existing = {}
    for item_id, prompt_id, _position, completion_id in session.execute(
        select(Item.id, Item.prompt_id, ItemCompletion.position, ItemCompletion.completion_id)
        .join(ItemCompletion, ItemCompletion.item_id == Item.id)
        .where(Item.project_id == project.id)
        .order_by(Item.id, ItemCompletion.position)
    ).all():
        existing.setdefault(item_id, [prompt_id]).append(completion_id)
    seen = {tuple(v) for v in existing.values()}
    added = duplicates = gold = 0
    new_items = []
    for row in parsed:
        pid = prompt_ids[row["prompt_hash"]]
        cids = [completion_ids[c["key"]] for c in row["completions"]]
        key = (pid, *cids)
        if key in seen:
            duplicates += 1
            continue
        seen.add(key)
        item = Item(
            project_id=project.id, prompt_id=pid, kind=kind, is_gold=row["gold"] is not None, gold_value=row["gold"],
            external_id=row["external_id"], meta=row["meta"], open_slots=project.overlap,
        )
        item.completions = [ItemCompletion(position=i, completion_id=cid) for i, cid in enumerate(cids)]
        new_items.append(item)
        added += 1
        gold += row["gold"] is not None
    session.add_all(new_items)
    session.flush()
    counts = {"items": added, "duplicates": duplicates, "gold": gold, "prompts": len(new_prompts), "completions": len(new_completions)}
    audit(session, "items.add", "project", project.id, actor_name=actor, **counts)
    return counts
