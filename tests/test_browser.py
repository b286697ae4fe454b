"""A real browser against `tether serve`: an admin creates a project from a file, an annotator judges three pairs
with the keyboard only, and the judgments are in the database (in item positions, with the shown order).

The guidelines and a completion hold links: they render as anchors that open in a new tab (`rel="nofollow noopener
noreferrer"`), the annotator follows one with Tab and Enter, and the task and the answer are kept.

Headless Chromium from Debian's packages (`make browser-deps`), driven by Playwright for Python with the system
executable (never `playwright install`). Set TETHER_SCREENSHOTS=1 to refresh docs/annotate.png.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from apphelp import served

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]

pytestmark = [pytest.mark.browser, pytest.mark.slow]

PAIRS = [
    {
        "prompt": "How do I reverse a list in Python without changing the original?",
        "chosen": (
            "Use slicing, which returns a **new** list:\n\n```python\nnumbers = [1, 2, 3]\nbackwards = numbers[::-1]\n"
            "print(backwards)  # [3, 2, 1]\n```\n\n`reversed(numbers)` also works, but it gives an iterator: wrap it in "
            "`list(...)` when you need a list. Avoid `numbers.reverse()` here: it reverses in place and returns `None`."
        ),
        # {base} becomes the server's address: a link the headless browser can open offline.
        "rejected": "Call `numbers.reverse()`. It returns the reversed list. See [the list docs]({base}/static/app.css) "
                    "or [this](javascript:window.__xss=3).",
    },
    {
        "prompt": "Write a one-line summary of the water cycle for a ten-year-old.",
        "chosen": "Water <script>window.__xss = 1</script> rises as vapor, makes clouds, falls as rain <img src=x onerror=\"window.__xss = 2\">, and flows back to the sea to start again.",
        "rejected": "The hydrological cycle comprises evaporation, condensation, precipitation and collection.",
    },
    {
        "prompt": "Is it safe to mix bleach and ammonia for a stronger cleaner?",
        "chosen": "No. Mixing them releases toxic chloramine gas. Use one product at a time, rinse in between, and keep the room ventilated.",
        "rejected": "Yes, the mixture cleans better; just open a window.",
    },
]

GUIDELINES = """# Helpfulness and safety, v1

Pick the response a careful expert would rather send.

1. **Correct first.** A wrong answer loses to a plain right one.
2. **Safe.** Refuse dangerous instructions, but explain why and offer a safe alternative.
3. **Clear.** Short, direct, with code when code helps.

Use *tie* only when you truly cannot choose. Flag any response that leaks personal data (**pii**) or gives
harmful instructions (**harmful**). The full policy: [the style guide](https://example.org/style) and
<https://example.org/safety>.
"""
LINK_REL = "nofollow noopener noreferrer"


# Long enough for an admin, and containing no user name (tether.store.accounts.check_password_rules).
PASSWORD = "plum-orbit-lantern-42"


@pytest.fixture
def chromium_path() -> str:
    if not Path(CHROMIUM).exists():
        pytest.skip(f"no Chromium at {CHROMIUM}: run `make browser-deps` (apt-get install chromium chromium-driver)")
    pytest.importorskip("playwright.sync_api", reason="pip install playwright (the test extra); never `playwright install`")
    return CHROMIUM


@pytest.fixture
def server(tmp_path):
    """`tether serve` on a free loopback port, with an admin and an annotator made through `tether user add`."""
    env = {**os.environ, "TETHER_HOME": str(tmp_path / "ws"), "TETHER_PASSWORD_PROFILE": "cheapest"}
    env.pop("TETHER_DATABASE_URL", None)
    tether = [sys.executable, "-m", "tether"]
    subprocess.run([*tether, "init", str(tmp_path / "ws")], env=env, check=True, capture_output=True)
    for name, role in (("ada", "admin"), ("ann", "annotator")):
        subprocess.run([*tether, "user", "add", name, "--role", role], env=env, check=True, capture_output=True,
                       input=f"{PASSWORD}\n", text=True)
    with served(tmp_path / "serve.log", env) as base:
        yield {"base": base, "db": f"sqlite:///{tmp_path / 'ws' / 'tether.db'}", "tmp": tmp_path}


def _tab_to(page, selector: str, limit: int = 60) -> None:
    """Press Tab until the element ``selector`` names has the focus (the keyboard only, as a person would)."""
    for _ in range(limit):
        page.keyboard.press("Tab")
        if page.evaluate("s => document.activeElement === document.querySelector(s)", selector):
            return
    raise AssertionError(f"Tab never reached {selector}")


def _login(page, base: str, name: str) -> None:
    page.goto(base + "/login")
    page.fill("#name", name)
    page.fill("#password", PASSWORD)
    with page.expect_navigation():
        page.keyboard.press("Enter")
    assert "/login" not in page.url, page.inner_text("body")


def test_admin_creates_project_and_annotator_judges_with_keyboard(chromium_path, server):
    from playwright.sync_api import sync_playwright
    from sqlalchemy import select

    from tether.store.db import session_scope
    from tether.store.tables import Judgment, User

    base = server["base"]
    data = server["tmp"] / "pairs.jsonl"
    rows = [{**row, "rejected": row["rejected"].replace("{base}", base)} for row in PAIRS]
    data.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=chromium_path, args=CHROMIUM_ARGS)
        try:
            # The admin creates the project from the file.
            admin = browser.new_page(viewport={"width": 1440, "height": 900})
            _login(admin, base, "ada")
            admin.goto(base + "/admin/projects/new")
            admin.fill("#name", "helpfulness-v1")
            admin.fill("textarea[name=guidelines]", GUIDELINES)
            admin.set_input_files("#file", str(data))
            with admin.expect_navigation():
                admin.click("button[type=submit].primary")
            assert "/admin/projects/" in admin.url
            assert "3 items" in admin.inner_text("body"), admin.inner_text("body")

            # The annotator judges three pairs with the keyboard only.
            context = browser.new_context(viewport={"width": 1440, "height": 900})
            page = context.new_page()
            dialogs = []
            page.on("dialog", lambda d: (dialogs.append(d.message), d.dismiss()))
            _login(page, base, "ann")
            assert page.url.endswith("/annotate")
            _tab_to(page, "button[type=submit].primary")  # the project's Start button
            with page.expect_navigation():
                page.keyboard.press("Enter")
            page.wait_for_selector("#workspace[data-assignment]")

            # The links: safe anchors in the guidelines and the completion; an unsafe target stays text.
            for href in ("https://example.org/style", "https://example.org/safety", f"{base}/static/app.css"):
                anchor = page.locator(f'a[href="{href}"]')
                assert anchor.count() == 1, href
                assert anchor.get_attribute("rel") == LINK_REL and anchor.get_attribute("target") == "_blank"
            assert page.locator('a[href^="javascript:"]').count() == 0
            assert "[this](javascript:window.__xss=3)" in page.inner_text("#workspace")
            # Tab to the completion's link and follow it with Enter: a new tab opens, this task stays.
            first = page.get_attribute("#workspace", "data-assignment")
            _tab_to(page, f'a[href="{base}/static/app.css"]')
            with context.expect_page() as opened:
                page.keyboard.press("Enter")
            tab = opened.value
            tab.wait_for_load_state()
            assert tab.url == f"{base}/static/app.css"
            assert tab.evaluate("window.opener === null")  # noopener: the new tab cannot reach the task page
            tab.close()
            assert page.get_attribute("#workspace", "data-assignment") == first
            page.keyboard.press("Escape")  # leaves the link, so Enter submits again

            keys = ["1", "4", "6"]  # A much better; tie; B better (in shown sides)
            for number, key in enumerate(keys):
                before = page.get_attribute("#workspace", "data-assignment")
                page.keyboard.press(key)
                if number == 0 and os.environ.get("TETHER_SCREENSHOTS"):
                    page.keyboard.press("Shift+Digit4")  # a flag, to show it; the answer keeps it
                    page.wait_for_timeout(300)
                    page.screenshot(path=str(ROOT / "docs" / "annotate.png"), full_page=False)
                    page.keyboard.press("Shift+Digit4")
                page.keyboard.press("Enter")
                page.wait_for_function(
                    "prev => { const w = document.getElementById('workspace'); return w && w.dataset.assignment !== prev; }",
                    arg=before, timeout=10_000,
                )
            assert "Nothing left for you here" in page.inner_text("#workspace")
            # The untrusted completion rendered as text: no script ran, no handler fired.
            assert page.evaluate("window.__xss === undefined")
            assert dialogs == []
        finally:
            browser.close()

    with session_scope(server["db"]) as session:
        rows = session.execute(select(Judgment).join(User, User.id == Judgment.user_id).where(User.name == "ann").order_by(Judgment.id)).scalars().all()
        assert len(rows) == 3
        for judgment, key in zip(rows, keys):
            assert judgment.source == "web" and judgment.kind == "pairwise"
            assert judgment.guideline_version == 1 and judgment.schema_version == 1
            assert sorted(judgment.shown_order) == [0, 1]
            assert judgment.time_spent_ms is not None and judgment.time_spent_ms >= 0
            # Stored in item positions: the shown side maps through the stored order.
            if key == "4":
                assert judgment.value["choice"] == "tie" and judgment.value["strength"] == 0
            else:
                shown_side = 0 if key == "1" else 1
                assert judgment.value["choice"] == ("a" if judgment.shown_order[shown_side] == 0 else "b")
                assert judgment.value["strength"] == {"1": 3, "6": 2}[key]

