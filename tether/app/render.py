"""Safe rendering of untrusted text (model output, prompts) and of the guidelines as HTML.

markdown-it-py with ``html=False`` escapes every raw HTML tag, so ``<script>`` and ``<img onerror=...>`` in a
completion show as text and never run. Images are disabled (a completion could otherwise make the annotator's
browser fetch any URL). A link becomes an anchor only when its target is an absolute ``http``, ``https`` or
``mailto`` URL; any other target (``javascript:``, ``data:``, a relative path, ``//host``) stays plain text. Anchors
open in a new tab (the task underneath stays as it was) with ``rel="nofollow noopener noreferrer"``. The
Content-Security-Policy set in middleware.py is a second wall: no inline script runs on any page.
"""

from __future__ import annotations

import re
from functools import lru_cache
from typing import Any

from markupsafe import Markup

# The link targets that become anchors (checked on markdown-it's normalized, percent-encoded URL).
SAFE_LINK = re.compile(r"^(?:https?://[^/?#\s]|mailto:[^\s])", re.IGNORECASE)
LINK_REL = "nofollow noopener noreferrer"


def safe_link(url: str) -> bool:
    """Whether ``url`` may be the target of an anchor: an absolute http(s) URL with a host, or a mailto."""
    return bool(SAFE_LINK.match(url))


@lru_cache(maxsize=2)
def _markdown(breaks: bool) -> Any:
    from markdown_it import MarkdownIt

    md = MarkdownIt("commonmark", {"html": False, "breaks": breaks, "linkify": False, "typographer": False})
    md.enable(["table", "strikethrough"])
    md.disable("image")
    md.validateLink = safe_link  # the parser asks this for every link and autolink target

    # markdown-it binds render rules to the renderer: the rule receives the renderer first.
    def link_open(renderer: Any, tokens: list, idx: int, options: Any, env: Any) -> str:
        tokens[idx].attrSet("rel", LINK_REL)
        tokens[idx].attrSet("target", "_blank")
        return renderer.renderToken(tokens, idx, options, env)

    md.add_render_rule("link_open", link_open)
    return md


def render_markdown(text: str | None) -> Markup:
    """HTML for untrusted markdown (model output): every raw tag escaped, no images, safe links; a newline in
    the text is a line break, as the model wrote it."""
    return Markup(_markdown(True).render(text or ""))


def render_document(text: str | None) -> Markup:
    """HTML for a written document (the guidelines): the same safety, with markdown's usual paragraphs."""
    return Markup(_markdown(False).render(text or ""))


def render_messages(messages: list[dict[str, Any]] | None) -> list[dict[str, Any]]:
    """Chat messages as ``[{"role", "html"}]`` for the templates (roles escaped by Jinja, content rendered)."""
    return [{"role": str(m.get("role", "")), "html": render_markdown(str(m.get("content", "")))} for m in messages or []]
