"""`tether demo`: the whole loop on the built-in task."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from tether.cli.common import JsonFlag


def demo_command(
    workspace: Annotated[Path, typer.Option("--workspace", help="The demo's workspace folder (made if missing; a run adds to it).")] = Path("tether-demo"),
    fast: Annotated[bool, typer.Option("--fast", help="A smaller run, about a minute (what CI runs).")] = False,
    seed: Annotated[int, typer.Option("--seed", help="Random seed: the same seed gives the same data, models and figures.")] = 0,
    algo: Annotated[str, typer.Option("--algo", help="Policy optimization: ppo (default) or grpo.")] = "ppo",
    rounds: Annotated[int | None, typer.Option("--rounds", min=0, help="On-policy rounds after the first (tether loop: the policy's own replies judged, a seeded reward ensemble refit, RL continued with an over-optimization watch); 0: the loop runs once. Default: the size's own.")] = None,
    redteam: Annotated[Path | None, typer.Option("--redteam", help="Red-team prompt sets for the evaluation (default: ../shared/data/redteam when present).")] = None,
    as_json: JsonFlag = False,
) -> None:
    """Run the whole RLHF loop on a built-in customer-support task, offline, on a CPU: SFT, candidate replies,
    simulated annotators, quality control, a snapshot, a reward model, PPO, evaluation, an HTML report and the
    registry. Prints a summary with the report's path.

    Example:  tether demo --fast
    """
    from tether.cli.common import emit_json
    from tether.demo.run import run_demo

    if as_json:  # stdout carries the one JSON object: what the trainers print goes to stderr with the progress
        import contextlib
        import sys

        with contextlib.redirect_stdout(sys.stderr):
            out = run_demo(workspace, fast=fast, seed=seed, algo=algo, progress=True, redteam=redteam, rounds=rounds)
    else:
        out = run_demo(workspace, fast=fast, seed=seed, algo=algo, progress=True, redteam=redteam, rounds=rounds)
    if as_json:
        emit_json(out)
        return
    typer.echo("")
    typer.echo("Tether demo: done in {:.0f} s".format(out["seconds"]))
    lo, hi = out["gold_win_rate_ci"]
    typer.echo(f"  gold win-rate of the policy vs SFT:  {out['gold_win_rate']:.0%}  (95% CI {lo:.0%}-{hi:.0%}; hidden guidelines)")
    typer.echo(f"  reward-model win-rate vs SFT:        {out['reward_win_rate']:.0%}")
    typer.echo(f"  rule violations, SFT -> policy:      {out['violation_rate_sft']:.0%} -> {out['violation_rate_policy']:.0%}")
    typer.echo(f"  good replies, SFT -> policy:         {out['good_style_sft']:.0%} -> {out['good_style_policy']:.0%}")
    typer.echo(f"  off-topic replies, SFT -> policy:    {out['off_topic_rate_sft']:.0%} -> {out['off_topic_rate_policy']:.0%}")
    typer.echo(f"  human judgments spent:               {out['judgments_total']}")
    for r in out.get("rounds", []):
        acc = r.get("rm_accuracy_new_pairs")
        typer.echo(f"  round {r['round']}: gold win-rate {r['gold_win_rate']:.0%}, off-topic {r['off_topic_rate']:.0%}, violations {r['violation_rate']:.0%}"
                   + (f", reward model on its new pairs {acc:.0%}" if acc is not None else "") + (f", {r['judgments_round']} judgments" if "judgments_round" in r else ""))
    if out.get("kl") is not None:
        typer.echo(f"  KL(policy || SFT):                   {out['kl']:.2f} nats")
    typer.echo(f"  QC flagged: {', '.join(out['qc']['flagged']) or 'nobody'};  snapshot {out['snapshot']['name']} sha256 {out['snapshot']['digest'][:16]}...")
    reg = out["registry"]
    typer.echo(f"  registered: {reg['reward_model']}, {reg['policy']}" + (" (champion)" if reg["champion"] else " (candidate; promotion refused, see notes)"))
    for stage in out["stages"]:
        for note in stage["notes"]:
            typer.echo(f"  note: {note}")
    typer.echo(f"  report: {out['report']}")
    typer.echo(f"  next:   cd {out['workspace']} && tether registry lineage {reg['policy']}")


def register(app: typer.Typer) -> None:
    app.command("demo")(demo_command)
