"""The model card of a registered version: what it is, what it was trained on, its figures and its limits."""

from __future__ import annotations

from tether.lifecycle.registry.common import _figures, _json

LIMITS = {
    "reward": (
        "A reward model predicts which of two replies the annotators behind its snapshot would prefer; it inherits "
        "their blind spots and their noise. It is calibrated only on the distribution of replies it was trained on: "
        "scores of replies far from that distribution (longer, other topics, other languages) are unreliable, and a "
        "policy optimized against it will find and exploit its errors (reward hacking): watch the gold or human "
        "win-rate, not only the proxy reward."
    ),
    "policy": (
        "The policy was optimized against a learned reward model and rule checks; it is as good as their coverage. "
        "Rule checks catch only what their patterns describe (personal data formats, listed phrases). The evaluation "
        "figures come from sampled replies on held-out prompts of the same task: expect different figures on other "
        "prompts. Red-team refusal rates measure refusals, not the harm of what is not refused."
    ),
}


def model_card(ref: str, tags: dict[str, str]) -> str:
    """A markdown model card from a version's tags: data, method, metrics, limits, lineage."""
    kind = tags.get("tether.kind", "?")
    config = _json(tags.get("tether.config")) or {}
    data = _json(tags.get("tether.data")) or {}
    figures = _figures(tags)
    lines = [f"# Model card: {ref}", "", f"**Kind:** {kind} model.  **Registered:** {tags.get('tether.registered_at', '?')}", ""]
    lines += ["## Data", ""]
    if tags.get("tether.snapshot_digest"):
        lines.append(f"- Snapshot: `{tags.get('tether.snapshot', '?')}`, sha256 `{tags['tether.snapshot_digest']}`")
    for key, value in data.items():
        if isinstance(value, dict):
            value = ", ".join(f"{k} ({v})" for k, v in value.items())
        elif isinstance(value, list):
            value = ", ".join(map(str, value)) or "none"
        lines.append(f"- {key.replace('_', ' ')}: {value}")
    if len(lines) and lines[-1] == "":
        lines.append("- (no data recorded)")
    lines += ["", "## Method", ""]
    if tags.get("tether.method"):
        lines.append(f"- {tags['tether.method']}")
    if tags.get("tether.base_model"):
        lines.append(f"- Base model: `{tags['tether.base_model']}`")
    if tags.get("tether.parent"):
        lines.append(f"- Trained against: `{tags['tether.parent']}`")
    shown = {k: v for k, v in config.items() if k in _CONFIG_SHOWN}
    if shown:
        lines.append("- Config: " + ", ".join(f"{k}={v}" for k, v in sorted(shown.items())))
    lines += ["", "## Evaluation", ""]
    if figures:
        lines += ["| figure | value |", "|---|---|"] + [f"| {k} | {v:.4g} |" for k, v in sorted(figures.items())]
    else:
        lines.append("No evaluation figures recorded yet (`tether eval policy ... --record VERSION`).")
    lines += ["", "## Limits", "", LIMITS.get(kind, ""), ""]
    if tags.get("tether.approved_by"):
        lines += ["## Governance", "", f"- Approved by {tags['tether.approved_by']} at {tags.get('tether.approved_at', '?')}"]
        if tags.get("tether.promoted_by"):
            lines.append(f"- Promoted to champion by {tags['tether.promoted_by']} at {tags.get('tether.promoted_at', '?')}")
        lines.append("")
    return "\n".join(lines)


_CONFIG_SHOWN = {
    "epochs", "max_steps", "batch_size", "learning_rate", "max_length", "seed", "lora_r", "group_size",
    "max_new_tokens", "kl_coef", "init_kl_coef", "temperature", "loss", "algorithm", "ensemble", "beta",
}
