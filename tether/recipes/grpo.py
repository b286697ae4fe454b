"""GRPO and RLOO: critic-free policy optimization with a group baseline, in one readable loop (``train_grpo``); what
they share with PPO (setup, sampling and scoring, log-probs before the update, minibatches, metrics) is
tether.recipes.online.

Each rollout samples ``group_size`` completions for each of ``batch_size x num_minibatches / group_size`` prompts,
scores them, turns the scores into advantages within each prompt's group, then makes ``ppo_epochs`` passes of
clipped policy-gradient updates (``num_minibatches`` optimizer steps each):

- GRPO (Shao et al. 2024, "DeepSeekMath", Sec. 4): ``A_i = (r_i - mean_group) / std_group`` (``scale_rewards=False``
  drops the std: Dr. GRPO, Liu et al. 2025); the KL to the reference is a loss term, ``kl_coef x k3`` per token.
- RLOO (Ahmadian et al. 2024, "Back to Basics"): ``A_i = r_i - mean of the other completions' rewards``; the KL
  is part of the reward, ``r_i = score_i - kl_coef x sum_t KL_t``.

Every token of a completion shares its advantage. With one pass and one minibatch the old log-probs equal the
current ones (detached) and are not recomputed, as in the GRPO paper's mu = 1.

Memory: with LoRA the reference is the policy with its adapter disabled; otherwise a frozen copy. ``kl_coef=0``
loads no reference at all.
"""


from __future__ import annotations

import time
from typing import Any

import torch

from tether.math.losses import (
    aggregate_loss,
    clipped_policy_loss,
    group_advantages,
    kl_estimate,
    leave_one_out_advantages,
    masked_mean,
    masked_sum,
)
from tether.recipes import online
from tether.recipes.configs import GRPOConfig
from tether.recipes.runtime import StepHook, TrainResult


def train_grpo(cfg: GRPOConfig, *, workspace: Any = None, on_step: StepHook | None = None) -> TrainResult:
    """Train with GRPO or RLOO (``cfg.algo``; prompts: a file, or ``snapshot:NAME`` in ``workspace``) and save the
    policy to ``cfg.output_dir``; ``on_step(step, stats)`` after every optimizer step."""
    # ---- setup: prompts, reward, policy, reference, optimizer (plumbing) --------------------------------------
    o = online.setup(cfg, cfg.algo, workspace=workspace, on_step=on_step, label=cfg.algo.upper())
    state, _ = online.start(o)
    run, plan, accelerator = o.run, o.plan, o.run.accelerator
    global_step = state["step"]
    kl_in_reward = cfg.kl_in_reward if cfg.kl_in_reward is not None else cfg.algo == "rloo"
    metrics: dict[str, float] = {}
    for rollout_index in range(state.get("rollout", 0), plan.total_rollouts):
        # ---- ALGO: sample group_size completions for each prompt, score them (a completion cut before EOS may be penalized)
        batch = online.sample_and_score(o, rollout_index)
        mask = batch.mask  # (B, R)

        # ---- ALGO: log-probs before the update, on the first pass's micro-batches (so its ratio is exactly 1);
        # one pass of one minibatch needs no old log-probs (they equal the current ones, detached: the paper's mu = 1)
        first_order = online.pass_order(o, batch, rollout_index, 0)
        need_old = cfg.ppo_epochs > 1 or cfg.num_minibatches > 1 or batch.rollout.sampler_logps is not None or (kl_in_reward and cfg.kl_coef > 0)
        old_logps, ref_logps = online.logps_before_update(o, batch, first_order, old=need_old)

        # ---- ALGO: advantages within each prompt's group -------------------------------------------------------
        seq_kl = torch.zeros_like(batch.scores)  # (B,) summed per-token KL estimate, filled before or during pass 0
        rewards = batch.scores
        if kl_in_reward and ref_logps is not None:
            seq_kl = masked_sum(kl_estimate(old_logps, ref_logps, cfg.kl_estimator), mask, dim=1)
            rewards = batch.scores - cfg.kl_coef * seq_kl
        if cfg.algo == "grpo":
            advantages = group_advantages(rewards, cfg.group_size, scale_by_std=cfg.scale_rewards)
        else:
            advantages = leave_one_out_advantages(rewards, cfg.group_size)
        is_weights = online.importance_weights(o, batch, old_logps)

        # ---- ALGO: ppo_epochs passes of num_minibatches clipped updates ------------------------------------------
        update_started, totals = time.perf_counter(), {}
        for epoch, mb_index, mb_rows, chunks in online.minibatches(o, batch, rollout_index, first_order):
            mb_tokens = mask[mb_rows].sum().clamp(min=1)
            step_stats: dict[str, float] = {}
            for chunk_index, rows in enumerate(chunks):
                with run.accumulating(last=chunk_index == len(chunks) - 1):
                    logps, entropy = online.logps(o, o.policy, batch, rows, with_entropy=epoch == 0)
                    m = mask[rows]
                    old = old_logps[rows] if old_logps is not None else logps.detach()
                    weights = is_weights[rows] if is_weights is not None else None
                    loss, stats = clipped_policy_loss(logps, old, advantages[rows].unsqueeze(1), m, cfg.clip_range, cfg.aggregation, weights)
                    if ref_logps is not None:
                        kl_tokens = kl_estimate(logps, ref_logps[rows], cfg.kl_estimator)
                        if not kl_in_reward:
                            loss = loss + cfg.kl_coef * aggregate_loss(kl_tokens, m, cfg.aggregation)
                            if epoch == 0:
                                seq_kl[rows] = masked_sum(kl_tokens.detach(), m, dim=1)
                    share = (m.sum() / mb_tokens) if cfg.aggregation == "token" else len(rows) / len(mb_rows)
                    accelerator.backward(loss * share)
                stats["loss/policy"] = loss.detach()
                if entropy is not None:
                    stats["policy/entropy"] = masked_mean(entropy, m)
                online.add_stats(step_stats, stats, share)
            run.optimizer_step()
            global_step += 1
            online.step_done(o, global_step, epoch, mb_index, step_stats, totals, batch)

        # ---- metrics, samples, checkpoint (plumbing) -----------------------------------------------------------
        metrics = online.rollout_metrics(o, batch, seq_kl, cfg.kl_coef, totals, update_started)
        metrics["objective/advantage_std"] = float(advantages.std()) if len(advantages) > 1 else 0.0
        metrics = online.end_rollout(o, rollout_index, global_step, batch, metrics, old_logps)

    return online.save(o, metrics, {"algo": cfg.algo, "reward": list(cfg.reward)})
