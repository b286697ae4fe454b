"""The demo's side of `tether loop --simulate`: the simulated annotators as the loop's judge, answering through the
store's queue (tether.demo.simulate), and the hidden gold preference they follow, put in each item's meta."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any


def simulated_judge(seed: int, crew: list[Any]) -> tuple[Callable[[str, str], Any], Callable[[Any, str, str], dict[str, Any]]]:
    """(judge, item_meta) for tether.lifecycle.loop: the demo's crew answers every open item of a project; each
    item carries ``sim_truth``, the task's gold preference between its two replies (only the simulated annotators
    read it)."""
    from tether.demo.simulate import run_annotators
    from tether.demo.task import DemoTask

    task = DemoTask(seed)
    calls = {"n": 0}

    def judge(url: str, project: str) -> dict[str, int]:
        calls["n"] += 1
        return run_annotators(url, project, crew, seed=seed * 1000 + calls["n"])

    def item_meta(prompt: Any, a: str, b: str) -> dict[str, Any]:
        return {"sim_truth": task.gold_prefers(prompt, a, b)}

    return judge, item_meta
