"""Property test: ``render_markdown`` and ``render_document`` on any text never raise and never yield an active
element (a script or other active tag, an event handler, a link to anything but http, https or mailto).

The text is drawn from arbitrary characters mixed with markdown and HTML fragments that attackers and careless
model output use. The example count is bounded so the suite stays fast (see docs/benchmarks.md, Fuzzing).
"""

from __future__ import annotations

import re
from html.parser import HTMLParser

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tether.app.render import LINK_REL, render_document, render_markdown, safe_link

EXAMPLES = 400

# What commonmark + tables + strikethrough may emit, and the attributes each tag may carry.
ALLOWED = {
    "p": set(), "br": set(), "em": set(), "strong": set(), "code": {"class"}, "pre": set(), "blockquote": set(),
    "ul": set(), "ol": {"start"}, "li": set(), "hr": set(), "s": set(), "table": set(), "thead": set(),
    "tbody": set(), "tr": set(), "th": {"style"}, "td": {"style"}, "a": {"href", "rel", "target"},
    **{f"h{n}": set() for n in range(1, 7)},
}
STYLE = re.compile(r"text-align:(left|right|center)")

FRAGMENTS = [
    "[", "]", "(", ")", "](", "<", ">", "<a href=", "<script>", "</script>", "<img src=x onerror=alert(1)>",
    "<svg onload=alert(1)>", "<iframe src=", "javascript:", "JaVaScRiPt:", "java\tscript:", "vbscript:",
    "data:text/html,", "http://", "https://", "mailto:", "//", "/", "\\", "&", "&#x6a;", "&#106;", "&colon;",
    "\"", "'", "`", "```", "~~~", "\n", "\n\n", "    ", "*", "_", "~~", "#", "> ", "- ", "1. ", "|", "---", "|:--|",
    "![", "onmouseover=", "\x00", "\ud800", "\u202e", "\u00a0", "<https://example.org>", "<mailto:a@b.c>",
    "[x]: https://example.org", "[x]", "<!--", "-->", "<style>", "{", "}",
]
texts = st.lists(st.one_of(st.text(max_size=12), st.sampled_from(FRAGMENTS)), max_size=40).map("".join)


class _Elements(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.problems: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag not in ALLOWED:
            self.problems.append(f"tag <{tag}>")
            return
        for name, value in attrs:
            value = value or ""
            if name.startswith("on") or name not in ALLOWED[tag]:
                self.problems.append(f"attribute {name}={value!r} on <{tag}>")
            elif name == "href" and not safe_link(value):
                self.problems.append(f"link target {value!r}")
            elif name == "rel" and value != LINK_REL or name == "target" and value != "_blank":
                self.problems.append(f"{name}={value!r}")
            elif name == "style" and not STYLE.fullmatch(value):
                self.problems.append(f"style {value!r}")
            elif name == "class" and not value.startswith("language-"):
                self.problems.append(f"class {value!r}")

    handle_startendtag = handle_starttag


def _active_parts(html: str) -> list[str]:
    parser = _Elements()
    parser.feed(html)
    parser.close()
    return parser.problems


@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(texts)
def test_rendering_never_raises_and_never_yields_an_active_element(text):
    for render in (render_markdown, render_document):
        html = str(render(text))
        assert _active_parts(html) == [], (text, html)


def test_the_checker_sees_active_elements():
    """The property above can fail: the checker flags what an unsafe renderer would emit."""
    assert _active_parts('<p><script>x</script><a href="javascript:x">a</a><b onclick="x">b</b></p>') == [
        "tag <script>", "link target 'javascript:x'", "tag <b>",
    ]
    assert _active_parts('<a href="https://e.org" rel="nofollow noopener noreferrer" target="_blank" onclick="x">') == [
        "attribute onclick='x' on <a>",
    ]
