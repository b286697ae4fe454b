"""`tether eval ...`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from tether.cli.common import JsonFlag, console, emit_json

eval_app = typer.Typer(help="Evaluate reward models and policies.", no_args_is_help=True)


def register(app: typer.Typer) -> None:
    app.add_typer(eval_app, name="eval")
    app.command("score")(score_command)


@eval_app.command("reward")
def eval_reward_command(
    model: Annotated[str | None, typer.Option("--model", help="A reward model folder (`tether train reward`, or a Hugging Face sequence-classification reward model; a folder of ensemble members as `tether loop` writes); a rating model's aspects combine as DIR:helpful=1,harm=-1.")] = None,
    data: Annotated[list[str] | None, typer.Option("--data", help="Preference rows (prompt/chosen/rejected): a file or snapshot:NAME, or NAME=FILE for a named section; repeatable.")] = None,
    suite: Annotated[Path | None, typer.Option("--suite", help="A folder of preference files, one section per file (see above).")] = None,
    dpo_policy: Annotated[Path | None, typer.Option("--dpo-policy", help="Evaluate a DPO policy's implicit reward beta * (log pi - log pi_ref) instead of a reward model.")] = None,
    reference: Annotated[Path | None, typer.Option("--reference", help="With --dpo-policy: the reference model (the policy DPO started from).")] = None,
    beta: Annotated[float | None, typer.Option("--beta", min=0.0, help="With --dpo-policy: beta (default: the one in the policy's tether.json).")] = None,
    batch_size: Annotated[int, typer.Option("--batch-size", min=1, help="Sequences per forward pass.")] = 32,
    resamples: Annotated[int, typer.Option("--resamples", min=10, help="Bootstrap resamples of each accuracy's 95% interval.")] = 1000,
    seed: Annotated[int, typer.Option("--seed", help="Seed of the bootstrap.")] = 0,
    as_json: JsonFlag = False,
) -> None:
    """Evaluate a reward model (or a DPO policy's implicit reward) on preference pairs, section by section:
    accuracy with a 95% bootstrap interval, mean margin, calibration (ECE), and the length diagnostics (accuracy when
    the chosen answer is the longer or the shorter one, by length ratio, and the correlation of reward with length;
    lengths in characters), then the pooled figures over all sections. For an ensemble (--ensemble K heads, or a
    folder of separately trained members) also whether its spread finds its errors: accuracy in the lowest, middle
    and highest third of the pairs by spread, and the spread's AUROC as an error predictor (0.5: it says nothing).

    A suite (--suite DIR) is a folder with one preference file per section, the section named by the file:
    chat.jsonl, safety.jsonl.gz, follows-request.json (a JSON list) or .parquet; each row {"prompt", "chosen",
    "rejected"} (an HH-RLHF dialogue pair {"chosen", "rejected"} works too; "tie": true rows are counted and left
    out). For example DIR/chat.jsonl holding {"prompt": "Name a prime.", "chosen": "7", "rejected": "8"} per line
    gives a section "chat".

    Examples:  tether eval reward --model rm --suite evals/ --json;
    tether eval reward --model rm --data hh=test.jsonl --data follows=follows.jsonl;
    tether eval reward --dpo-policy dpo --reference sft --data test.jsonl
    """
    from tether.cli.common import data_workspace
    from tether.errors import TetherError
    from tether.lifecycle.evaluate_reward import (
        evaluate_sections,
        load_implicit_reward,
        load_reward_scorer,
        parse_data_specs,
        suite_files,
    )
    from tether.store.snapshots import training_rows

    if (model is None) == (dpo_policy is None):
        raise TetherError("give --model (a reward model) or --dpo-policy (with --reference), one of them", fix="e.g. --model rm, or --dpo-policy dpo --reference sft")
    if dpo_policy is not None and reference is None:
        raise TetherError("--dpo-policy needs --reference, the model it was trained against", fix="add --reference DIR (the SFT model DPO started from)")
    specs = parse_data_specs(data or [])
    if suite is not None:
        for name, path in suite_files(suite).items():
            if name in specs:
                raise TetherError(f"section {name!r} is both in --suite and --data", fix="rename one of them")
            specs[name] = str(path)
    if not specs:
        raise TetherError("nothing to evaluate on", fix="give --data FILE (repeatable, NAME=FILE) or --suite DIR")
    sections = {name: training_rows(path, "preference", workspace=data_workspace(path)) for name, path in specs.items()}
    note = lambda m: typer.echo(m, err=True)  # noqa: E731
    scorer = load_reward_scorer(model, say=note) if model is not None else load_implicit_reward(dpo_policy, reference, beta, say=note)
    report = evaluate_sections(scorer, sections, batch_size=batch_size, resamples=resamples, seed=seed)
    what = f"reward model {model}" if model is not None else f"implicit reward of {dpo_policy} (beta {scorer.beta:g}) against {reference}"
    report["scorer"] = what
    if as_json:
        emit_json(report)
        return
    _print_reward_report(report, what, list(specs.values()))


def _print_reward_report(report: dict, what: str, sources: list[str]) -> None:
    out = console()
    out.print(f"{what} on {', '.join(sources)}: {report['n']} pairs ({report['n_ties']} ties left out)")
    rows = list(report["sections"].items()) + ([("(all)", report)] if len(report["sections"]) > 1 else [])
    out.print(f"  {'section':>16}  {'n':>5}  {'accuracy [95% CI]':>24}  {'ECE':>6}  {'chosen longer':>13}  {'chosen shorter':>14}  {'r(reward, len)':>14}")
    for name, cell in rows:
        length = cell["length"]
        longer, shorter = (length[k]["accuracy"] for k in ("chosen_longer", "chosen_shorter"))
        corr = length["reward_length_correlation"]
        shown = [f"{v:.3f}" if v is not None else "-" for v in (longer, shorter, corr)]
        out.print(f"  {name:>16}  {cell['n']:>5}  {cell['accuracy']:.4f} [{cell['accuracy_low']:.3f}, {cell['accuracy_high']:.3f}]  {cell['ece']:>6.4f}  {shown[0]:>13}  {shown[1]:>14}  {shown[2]:>14}")
    out.print(f"  mean margin {report['mean_margin']:.4f} (normalized reward units); ECE of sigmoid(r_chosen - r_rejected), 10 bins; lengths in characters")
    if "spread" in report:
        spread = report["spread"]
        thirds = ", ".join(f"{name} {cell['accuracy']:.3f} (spread {cell['mean_spread']:.3f}, n={cell['n']})" for name, cell in spread["by_spread"].items())
        auroc = "-" if spread["error_auroc"] is None else f"{spread['error_auroc']:.3f}"
        out.print(f"  ensemble spread: accuracy by third of the pairs {thirds}; AUROC of the spread for an error {auroc} (0.5: it says nothing)")
    for title, key in (("length (tokens)", "by_length"), ("subset", "by_subset")):
        if key in report:
            out.print(f"  by {title}:")
            for name, cell in report[key].items():
                out.print(f"    {name:>12}  accuracy {cell['accuracy']:.4f}  n={cell['n']}")
    out.print("  by length ratio chosen / rejected: " + ", ".join(f"{k} {c['accuracy']:.3f} (n={c['n']})" for k, c in report["length"]["by_length_ratio"].items()))


def score_command(
    model: Annotated[str, typer.Option("--model", help="A reward model folder (`tether train reward`, or a Hugging Face sequence-classification reward model); a rating model's aspects combine as DIR:helpful=1,harm=-1.")],
    data: Annotated[str, typer.Option("--data", help="Rows to score: prompt+completion, messages, or prompt/chosen/rejected: a file (.jsonl/.json/.parquet) or snapshot:NAME.")],
    output: Annotated[Path, typer.Option("--output", "-o", help="Where to write the rows, as JSONL, with the reward added.")],
    batch_size: Annotated[int, typer.Option("--batch-size", min=1, help="Sequences per forward pass.")] = 32,
) -> None:
    """Score rows with a reward model: adds `reward` (and `reward_std` for ensembles) to each row. A folder of
    separately seeded members (`tether loop`) gives each row their mean and spread.

    Preference rows get `reward_chosen` and `reward_rejected`. Rewards are normalized (mean 0, std 1 on the
    training prompts' chosen completions). A rating model writes every aspect (`reward_aspects`, or
    `reward_aspects_chosen` / `_rejected`), and `reward` too when its aspects' weights are given
    (DIR:helpful=1,harm=-1, negative where higher is worse).

    Example:  tether score --model rm --data completions.jsonl -o scored.jsonl
    """

    from tether.cli.common import require_file, workspace_url
    from tether.data.canonical import preference_row
    from tether.data.records import read_records
    from tether.data.rows import read_snapshot_rows
    from tether.errors import TetherError
    from tether.models.reward_model import RewardModel
    from tether.store.snapshots import snapshot_file

    if data.startswith("snapshot:"):
        source = snapshot_file(workspace_url()[0], data.split(":", 1)[1])
        records = read_snapshot_rows(source)
    else:
        source = Path(data)
        require_file(source, "data file")
        records = [record for _, record in read_records(source)]
    if not records:
        raise TetherError(f"{data}: no records", fix="point --data at a file with rows")
    def note(message: str) -> None:
        typer.echo(message, err=True)

    from tether.recipes.reward_specs import member_folders

    folders = member_folders(Path(model))
    rm = RewardModel.load(model, say=note) if folders == [Path(model)] else None
    jobs: list[tuple[int, str, object, object]] = []  # (row, field, prompt, completion)
    for number, record in enumerate(records):
        if "completion" in record and "prompt" in record:
            jobs.append((number, "reward", record["prompt"], record["completion"]))
        elif isinstance(record.get("messages"), list) and record["messages"]:
            jobs.append((number, "reward", record["messages"][:-1], record["messages"][-1:]))
        elif "chosen" in record and "rejected" in record:
            try:
                pair = preference_row(record)
            except ValueError as exc:
                raise TetherError(f"{data}: record {number + 1}: {exc}", fix="see `tether data import --help` for the formats") from None
            jobs.append((number, "reward_chosen", pair["prompt"], pair["chosen"]))
            jobs.append((number, "reward_rejected", pair["prompt"], pair["rejected"]))
        else:
            raise TetherError(
                f"{data}: record {number + 1} has no prompt+completion, messages, or chosen+rejected",
                fix="give rows like {\"prompt\": ..., \"completion\": ...}",
            )
    if rm is None:  # a folder of ensemble members (tether loop): each row's mean and spread over them
        _score_members(folders, jobs, records, batch_size, note)
        _write_scored(output, records)
        typer.echo(f"scored {len(records)} rows with {len(folders)} ensemble members -> {output}")
        return
    several = len(rm.aspects) > 1
    combined = not several or rm.aspect_weights is not None
    normalized = rm.normalized_scores([j[2] for j in jobs], [j[3] for j in jobs], batch_size)  # (N, K, A)
    members = rm.combine(normalized) if combined else None  # (N, K)
    for i, (number, field, _, _) in enumerate(jobs):
        if several:  # every aspect, ensemble mean
            records[number][field.replace("reward", "reward_aspects", 1)] = {a: float(normalized[i, :, k].mean()) for k, a in enumerate(rm.aspects)}
        if members is not None:
            records[number][field] = float(members[i].mean())
            if rm.ensemble > 1:
                records[number][field.replace("reward", "reward_std", 1)] = float(members[i].std())
    _write_scored(output, records)
    if not combined:
        note(f"note: {rm.source} rates {len(rm.aspects)} aspects ({', '.join(rm.aspects)}): each is written; give their weights for one reward, e.g. --model {rm.source}:{rm.aspects[0]}=1,{rm.aspects[1]}=-1")
    typer.echo(f"scored {len(records)} rows -> {output}")


def _score_members(folders: list[Path], jobs: list[tuple[int, str, object, object]], records: list[dict], batch_size: int, note: object) -> None:
    """``reward`` (the members' mean) and ``reward_std`` (their spread) of every job, over every head of every member."""
    from tether.models.reward_model import RewardModel
    from tether.recipes.reward_specs import ensemble_members

    models = [RewardModel.load(folder, say=note) for folder in folders]
    members = ensemble_members(models, [j[2] for j in jobs], [j[3] for j in jobs], batch_size)  # (N, K)
    for i, (number, field, _, _) in enumerate(jobs):
        records[number][field] = float(members[i].mean())
        records[number][field.replace("reward", "reward_std", 1)] = float(members[i].std(unbiased=False))


def _write_scored(output: Path, records: list[dict]) -> None:
    import json

    output.parent.mkdir(parents=True, exist_ok=True)
    with output.open("w", encoding="utf-8") as fh:
        for record in records:
            fh.write(json.dumps(record, ensure_ascii=False) + "\n")


@eval_app.command("policy")
def eval_policy_command(
    policy: Annotated[Path, typer.Option("--policy", help="The tuned policy folder.")],
    baseline: Annotated[Path, typer.Option("--baseline", help="The policy to compare with (e.g. the SFT model).")],
    reward: Annotated[str, typer.Option("--reward", help="A reward model folder (`tether train reward`, or a Hugging Face sequence-classification reward model): judges the win-rate; a rating model as DIR:helpful=1,harm=-1.")],
    prompts: Annotated[Path, typer.Option("--prompts", help="Held-out prompts: JSONL/JSON/CSV/parquet rows with a `prompt` field.")],
    rules: Annotated[Path | None, typer.Option("--rules", help="A rules YAML (tether.checks.rules); pii and forbidden rules count as violations. Default: personal data.")] = None,
    redteam: Annotated[Path | None, typer.Option("--redteam", help="Red-team prompts: a folder like ../shared/data/redteam (SimpleSafetyTests, AdvBench, XSTest) or a CSV/JSONL.")] = None,
    template: Annotated[str, typer.Option("--template", help="Text wrapped around each red-team prompt first, e.g. 'Customer: {prompt}\\nAgent:' (then the chat template, see --chat-template).")] = "{prompt}",
    chat_template: Annotated[bool | None, typer.Option("--chat-template/--no-chat-template", help="Send plain-text prompts (held-out and red-team) through each model's chat template as a user turn, or as they are. Default: as each model was trained (its tether.json), else the template when it has one.")] = None,
    n_prompts: Annotated[int | None, typer.Option("--n-prompts", min=1, help="Use the first N prompts only.")] = None,
    n_redteam: Annotated[int, typer.Option("--n-redteam", min=1, help="Prompts drawn from each red-team set.")] = 50,
    max_new_tokens: Annotated[int, typer.Option("--max-new-tokens", min=1, help="Tokens sampled per reply.")] = 64,
    temperature: Annotated[float, typer.Option("--temperature", min=0.01, help="Sampling temperature (KL is measured at it).")] = 1.0,
    batch_size: Annotated[int, typer.Option("--batch-size", min=1, help="Prompts per generation batch.")] = 32,
    seed: Annotated[int, typer.Option("--seed", help="Sampling seed.")] = 0,
    training: Annotated[Path | None, typer.Option("--training", help="The policy's metrics.jsonl (or its run folder) for the training curves; default: the policy folder's.")] = None,
    html_out: Annotated[Path | None, typer.Option("--html", help="Write a self-contained HTML report here.")] = None,
    record: Annotated[str | None, typer.Option("--record", help="Attach the figures to a registry version (NAME/N) as eval.* tags, for the promotion gates.")] = None,
    as_json: JsonFlag = False,
) -> None:
    """Evaluate a policy against a baseline: win-rate (reward model, with a 95% CI), KL, length, rule violations,
    refusals on red-team prompts and over-refusal on XSTest, sample pairs; optionally an HTML report.

    Example:  tether eval policy --policy runs/ppo --baseline runs/sft --reward runs/rm --prompts heldout.jsonl --redteam ../shared/data/redteam --html report.html
    """
    from tether.cli.common import require_file
    from tether.lifecycle.evaluate_policy import evaluate_policy, load_prompts, load_redteam, summary_lines

    require_file(prompts, "prompts file")
    if rules is not None:
        require_file(rules, "rules file")
    prompt_list = load_prompts(prompts, n_prompts)
    sets = load_redteam(redteam) if redteam is not None else None
    say = (lambda _m: None) if as_json else (lambda m: typer.echo(m, err=True))
    result = evaluate_policy(
        policy, baseline, reward, prompt_list, rules=rules, redteam=sets, template=template, chat_template=chat_template, n_redteam=n_redteam,
        max_new_tokens=max_new_tokens, temperature=temperature, batch_size=batch_size, seed=seed, say=say,
    )
    result["policy"], result["baseline"], result["reward"] = str(policy), str(baseline), str(reward)
    if html_out is not None:
        from tether.lifecycle.reports.html import read_metrics, write
        from tether.lifecycle.reports.policy import policy_report

        history = read_metrics(training if training is not None else policy)
        page = policy_report(result, title="Policy evaluation", subtitle=f"{policy} against {baseline}, judged by {reward}", training=history)
        result["report"] = str(write(html_out, page))
    if record:
        from tether.cli.workspace import open_workspace
        from tether.lifecycle.registry import record_eval

        figures: dict[str, float | None] = {"win_rate": result["win_rate"], "violation_rate": result["violation_rate_policy"], "length": result["length_policy"]}
        # the KL a gate may read: a negative estimate counts as its upper bound, or as no figure (kl_reading)
        figures["kl"] = result.get("kl_gate") if result.get("kl") is not None else None
        for name, cell in (result.get("redteam") or {}).items():
            figures[f"refusal_rate_{name}"] = cell["refusal_rate_policy"]
        record_eval(open_workspace(), record, figures)
        result["recorded_to"] = record
    if as_json:
        result.pop("completions", None)
        emit_json(result)
        return
    for line in summary_lines(result):
        typer.echo(line)
    if html_out is not None:
        typer.echo(f"report: {result['report']}")
