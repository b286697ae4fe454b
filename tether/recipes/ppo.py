"""PPO for language models with a learned critic, in one readable loop (``train_ppo``); what it shares with GRPO and
RLOO (setup, sampling and scoring, log-probs before the update, minibatches, metrics) is tether.recipes.online.

The implementation details follow Huang et al. 2024, "The N+ Implementation Details of RLHF with PPO", and
Ziegler et al. 2019, "Fine-Tuning Language Models from Human Preferences":

1. Sample completions with a stop at EOS; score prompt+completion with the reward (a reward model reads its
   reward at the EOS it appends); a completion without EOS loses ``missing_eos_penalty``.
2. Recompute log-probs with the logits divided by the sampling temperature; values from the critic; padding
   masked out of every sum; dropout off in every model.
3. Per-token rewards: ``-kl_coef x KL_t`` on every completion token plus the score on the last one.
4. GAE (gamma 1, lambda 0.95), advantages whitened over the rollout's tokens.
5. ``ppo_epochs`` passes of ``num_minibatches`` optimizer steps: clipped policy loss + ``vf_coef`` x clipped value
   loss. The first minibatch of the first pass sees the rollout's own log-probs, so its ratio is exactly 1.
6. A fixed KL coefficient, or the adaptive controller of Ziegler et al. (``adaptive_kl``, ``kl_target``,
   ``kl_horizon``).

The critic (value model, tether.models.value_model) is a transformer with a scalar head on every token, started
from the reward model where it can be, else from the policy. With LoRA the reference is the policy with its adapter disabled and the
critic gets its own LoRA adapter (its head trained in full).
"""


from __future__ import annotations

import time
from typing import Any

import torch

from tether.math.losses import (
    adaptive_kl_coef,
    clipped_policy_loss,
    clipped_value_loss,
    gae_advantages,
    kl_estimate,
    kl_penalized_rewards,
    masked_mean,
    masked_sum,
    masked_whiten,
)
from tether.models.hf import apply_lora, disable_dropout
from tether.models.logprobs import position_ids
from tether.models.value_model import load_critic
from tether.recipes import online
from tether.recipes.configs import PPOConfig
from tether.recipes.runtime import Run, StepHook, TrainResult


def critic_values(run: Run, critic: Any, batch: online.Batch, rows: torch.Tensor) -> torch.Tensor:
    """Values of the states before each completion token of ``rows``: (b, R)."""
    ids, att = batch.input_ids[rows], batch.attention_mask[rows]
    with run.accelerator.autocast():
        return critic(ids, att, position_ids(att))[:, -batch.width - 1 : -1].float()


def train_ppo(cfg: PPOConfig, *, workspace: Any = None, on_step: StepHook | None = None) -> TrainResult:
    """Train with PPO (prompts: a file, or ``snapshot:NAME`` in ``workspace``) and save the policy, and its critic
    under ``critic/``, to ``cfg.output_dir``; ``on_step(step, stats)`` after every optimizer step."""
    # ---- setup: prompts, reward, policy, reference, critic, optimizers (plumbing) ------------------------------
    o = online.setup(cfg, "ppo", workspace=workspace, on_step=on_step, label="PPO")
    critic, critic_note = load_critic(cfg, o.tokenizer, o.reward.reward_models)
    disable_dropout(critic)
    if cfg.lora_r:
        critic.model = apply_lora(critic.model, cfg, task_type="SEQ_CLS")
    o.run.say(critic_note)
    state, (critic,) = online.start(o, critic)
    run, plan, accelerator = o.run, o.plan, o.run.accelerator
    global_step, kl_coef = state["step"], state.get("kl_coef", cfg.kl_coef)
    metrics: dict[str, float] = {}
    for rollout_index in range(state.get("rollout", 0), plan.total_rollouts):
        # ---- ALGO: sample completions, score prompt+completion (a completion cut before EOS loses missing_eos_penalty)
        batch = online.sample_and_score(o, rollout_index)
        mask = batch.mask  # (B, R)

        # ---- ALGO: log-probs, reference log-probs and values before the update, on the first pass's micro-batches
        first_order = online.pass_order(o, batch, rollout_index, 0)
        old_logps, ref_logps = online.logps_before_update(o, batch, first_order, old=True)
        ref_logps = old_logps if ref_logps is None else ref_logps  # kl_coef 0: no reference, no KL
        old_values = torch.zeros_like(mask, dtype=torch.float32)
        with torch.no_grad():
            for chunk in online.micro_chunks(first_order, run.micro_batch):
                old_values[chunk] = critic_values(run, critic, batch, chunk)

        # ---- ALGO: per-token KL-penalized rewards, GAE, whitened advantages --------------------------------------
        kl = kl_estimate(old_logps, ref_logps, cfg.kl_estimator) * mask  # (B, R)
        rewards = kl_penalized_rewards(batch.scores, kl, mask, kl_coef)  # (B, R)
        if cfg.whiten_rewards:
            rewards = masked_whiten(rewards, mask, shift_mean=False)
        advantages, returns = gae_advantages(rewards, old_values, mask, cfg.gamma, cfg.lam)
        advantages = masked_whiten(advantages, mask)
        is_weights = online.importance_weights(o, batch, old_logps)

        # ---- ALGO: ppo_epochs passes of num_minibatches clipped policy + value updates ---------------------------
        update_started, totals = time.perf_counter(), {}
        for epoch, mb_index, mb_rows, chunks in online.minibatches(o, batch, rollout_index, first_order):
            mb_tokens = mask[mb_rows].sum().clamp(min=1)
            step_stats: dict[str, float] = {}
            for chunk_index, rows in enumerate(chunks):
                with run.accumulating(last=chunk_index == len(chunks) - 1):
                    logps, entropy = online.logps(o, o.policy, batch, rows, with_entropy=epoch == 0)
                    values = critic_values(run, critic, batch, rows)
                    m = mask[rows]
                    weights = is_weights[rows] if is_weights is not None else None
                    pg_loss, stats = clipped_policy_loss(logps, old_logps[rows], advantages[rows], m, cfg.clip_range, cfg.aggregation, weights)
                    vf_loss, value_stats = clipped_value_loss(values, old_values[rows], returns[rows], m, cfg.clip_range_value, cfg.aggregation)
                    share = (m.sum() / mb_tokens) if cfg.aggregation == "token" else len(rows) / len(mb_rows)
                    accelerator.backward((pg_loss + cfg.vf_coef * vf_loss) * share)
                stats.update(value_stats)
                stats["loss/policy"], stats["loss/value"] = pg_loss.detach(), vf_loss.detach()
                if entropy is not None:
                    stats["policy/entropy"] = masked_mean(entropy, m)
                online.add_stats(step_stats, stats, share)
            run.optimizer_step()
            global_step += 1
            online.step_done(o, global_step, epoch, mb_index, step_stats, totals, batch)

        # ---- ALGO: adaptive KL controller (Ziegler et al. 2019) ------------------------------------------------
        seq_kl = masked_sum(kl, mask, dim=1)  # (B,)
        used_kl_coef = kl_coef
        if cfg.adaptive_kl:
            kl_coef = adaptive_kl_coef(kl_coef, float(seq_kl.mean()), cfg.kl_target, cfg.kl_horizon, plan.rollout_size)

        # ---- metrics, samples, checkpoint (plumbing) -----------------------------------------------------------
        metrics = online.rollout_metrics(o, batch, seq_kl, used_kl_coef, totals, update_started)
        metrics.update({"objective/non_score_reward": float(-used_kl_coef * seq_kl.mean()), "objective/kl_coef": used_kl_coef,
                        "val/returns": float(masked_mean(returns, mask))})
        metrics = online.end_rollout(o, rollout_index, global_step, batch, metrics, old_logps, {"kl_coef": kl_coef})

    result = online.save(o, metrics, {"algo": "ppo", "reward": list(cfg.reward), "critic": critic_note, "final_kl_coef": kl_coef})
    if accelerator.is_main_process:
        accelerator.unwrap_model(critic).model.save_pretrained(str(result.output_dir / "critic"))
    return result
