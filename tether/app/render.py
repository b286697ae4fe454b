"""Safe rendering of untrusted text (model output, prompts) and of the guidelines as HTML.

markdown-it-py with ``html=False`` escapes every raw HTML tag, so ``<script>`` and ``<img onerror=...>`` in a
completion show as text and never run. Images are disabled (a completion could otherwise make the annotator's
browser fetch any URL), and links get ``rel="nofollow noopener noreferrer"``; markdown-it already refuses
``javascript:``, ``vbscript:`` and ``data:`` link targets. The Content-Security-Policy set in main.py is a
second wall: no inline script runs on any page.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any

from markupsafe import Markup


@lru_cache(maxsize=2)
def _markdown(breaks: bool) -> Any:
    from markdown_it import MarkdownIt

    md = MarkdownIt("commonmark", {"html": False, "breaks": breaks, "linkify": False, "typographer": False})
    md.enable(["table", "strikethrough"])
    md.disable("image")

    default_link_open = md.renderer.rules.get("link_open")

    def link_open(tokens: list, idx: int, options: Any, env: Any) -> str:
        tokens[idx].attrSet("rel", "nofollow noopener noreferrer")
        if default_link_open is not None:
            return default_link_open(tokens, idx, options, env)
        return md.renderer.renderToken(tokens, idx, options, env)

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
