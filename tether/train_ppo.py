"""PPO for language models with a learned critic, in one readable loop.

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

The critic (value model) is a transformer with a scalar head on every token. It starts from the reward model
when the first reward SPEC is a reward-model folder that is a decoder sharing the policy's tokenizer (its head and
its normalization carried over, so the first values are the reward model's normalized scores); otherwise, or when
the reward model is an encoder or tokenizes differently, from the policy's weights with a new scalar head;
``critic=FOLDER`` picks another start. With LoRA the reference is the policy with its adapter disabled and the
critic gets its own LoRA adapter (its head trained in full).
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from tether.config import PPOConfig
from tether.models.value_model import load_critic


def train_ppo(cfg: PPOConfig, *, on_step: Callable[[int, int, int, dict[str, float]], None] | None = None) -> Path:
    """Train with PPO and save the policy (and its critic under ``critic/``) to ``cfg.output_dir``.

    ``on_step(step, epoch, minibatch, stats)`` is called after every optimizer step (tests use it).
    """
    from tether.data.canonical import rows_digest
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
        truncated_is_weights,
    )
    from tether.models.hf import apply_lora, disable_dropout, load_causal_lm, load_tokenizer, refuse_adapter
    from tether.models.logprobs import completion_logps, position_ids
    from tether.models.sampling import VLLMSampler, sample_rollout, sampler_gap_metrics
    from tether.recipes.online import (
        mean_over_processes,
        plan_rollouts,
        prompt_indices,
        update_order,
        write_samples,
    )
    from tether.rewards import load_reward
    from tether.store.snapshots import training_rows
    from tether.store.workspace import current_workspace
    from tether.training import (
        Checkpointer,
        MetricsLogger,
        Progress,
        make_accelerator,
        make_optimizer,
        make_scheduler,
        save_model_dir,
        set_seed,
        shard_batch,
    )

    # ---- setup: data, reward, models, optimizers (plumbing) ------------------------------------------------
    set_seed(cfg.seed)
    accelerator, _, micro_batch = make_accelerator(cfg)
    rows = training_rows(cfg.prompts, "prompt", workspace=current_workspace())
    prompts = [row["prompt"] for row in rows]
    plan = plan_rollouts(cfg, len(prompts), accelerator.num_processes)
    total_steps, updates_per_rollout, minibatch = plan.total_steps, plan.updates_per_rollout, plan.minibatch
    checkpointer = Checkpointer(cfg, accelerator, data_digest=rows_digest(rows), total_steps=total_steps)  # checks the folder
    reward = load_reward(cfg.reward, device=str(accelerator.device), batch_size=cfg.reward_batch_size, bf16=cfg.bf16, say=accelerator.print)
    tokenizer = load_tokenizer(cfg.model, chat_template=cfg.chat_template, say=accelerator.print)
    # fp32 master weights; with bf16 the forward passes run under autocast (the frozen reference is bf16)
    refuse_adapter(cfg.model)
    policy = load_causal_lm(cfg.model, bf16=False, gradient_checkpointing=cfg.gradient_checkpointing)
    disable_dropout(policy)
    policy = apply_lora(policy, cfg)
    reference = None
    if cfg.kl_coef > 0 and not cfg.lora_r:
        reference = load_causal_lm(cfg.model, bf16=cfg.bf16).to(accelerator.device).eval().requires_grad_(False)
    critic, critic_note = load_critic(cfg, tokenizer, reward.reward_models)
    disable_dropout(critic)
    if cfg.lora_r:
        critic.model = apply_lora(critic.model, cfg, task_type="SEQ_CLS")
    if accelerator.is_main_process:
        print(critic_note)

    optimizer, critic_optimizer = make_optimizer(policy, cfg), make_optimizer(critic, cfg)
    scheduler, critic_scheduler = make_scheduler(optimizer, cfg, total_steps), make_scheduler(critic_optimizer, cfg, total_steps)
    policy, critic, optimizer, critic_optimizer = accelerator.prepare(policy, critic, optimizer, critic_optimizer)
    # Not prepare(): Accelerate's scheduler wrapper steps once per process, and total_steps already counts global steps.
    accelerator.register_for_checkpointing(scheduler)
    accelerator.register_for_checkpointing(critic_scheduler)
    vllm = None
    if cfg.sampler == "vllm":
        vllm = VLLMSampler(cfg.model, gpu_memory_utilization=cfg.vllm_gpu_memory_utilization, max_model_len=cfg.max_length, seed=cfg.seed, bf16=cfg.bf16)
    output_dir = Path(cfg.output_dir)
    logger = MetricsLogger(output_dir, cfg, run_name=f"ppo-{output_dir.name}", accelerator=accelerator)
    state = checkpointer.restore()
    start_rollout, global_step, kl_coef = state.get("rollout", 0), state.get("step", 0), state.get("kl_coef", cfg.kl_coef)
    device = accelerator.device
    samples_path = output_dir / "samples.jsonl"
    metrics: dict[str, float] = {}

    def policy_forward(model: Any, rows_: torch.Tensor, with_entropy: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
        with accelerator.autocast():
            return completion_logps(model, input_ids[rows_], attention_mask[rows_], width, cfg.temperature, with_entropy, cfg.share_prompts)

    def value_forward(rows_: torch.Tensor) -> torch.Tensor:
        """Values of the states before each completion token: (b, R)."""
        ids, att = input_ids[rows_], attention_mask[rows_]
        with accelerator.autocast():
            return critic(ids, att, position_ids(att))[:, -width - 1 : -1].float()

    def crossed(step: int, every: int) -> bool:
        """True when this rollout's updates passed a multiple of ``every`` optimizer steps."""
        return step // every > (step - updates_per_rollout) // every

    def pass_order(epoch: int) -> torch.Tensor:
        """This pass's row order over the rollout, fixed by (seed, rollout, epoch)."""
        return update_order(len(rollout), minibatch, cfg.seed * 1_000_003 + rollout_index * 1_009 + epoch).to(device)

    progress = Progress(total_steps, "PPO", enabled=cfg.progress and accelerator.is_main_process, completed=global_step)
    for rollout_index in range(start_rollout, plan.total_rollouts):
        # ---- ALGO: sample completions ------------------------------------------------------------------
        started = time.perf_counter()
        indices = shard_batch(prompt_indices(len(prompts), rollout_index, plan.prompts_per_rollout, cfg.seed), accelerator)
        unwrapped = accelerator.unwrap_model(policy)
        sampling = dict(group_size=cfg.group_size, max_new_tokens=cfg.max_new_tokens, max_prompt_tokens=cfg.max_length - cfg.max_new_tokens, temperature=cfg.temperature, top_p=cfg.top_p)
        if vllm is not None:
            vllm.load_weights(unwrapped)
            rollout = vllm.generate(tokenizer, [prompts[i] for i in indices], **sampling)
        else:
            with accelerator.autocast():
                rollout = sample_rollout(unwrapped, tokenizer, [prompts[i] for i in indices], sampler=cfg.sampler, cache=cfg.cache, decoder=cfg.decoder, **sampling)
        generated_s = time.perf_counter() - started

        # ---- ALGO: score prompt+completion; a completion cut before EOS loses missing_eos_penalty ----------
        scores, reward_metrics = reward.score(rollout.prompts, rollout.prompt_texts, rollout.completion_texts)
        if cfg.missing_eos_penalty is not None:
            scores = scores - cfg.missing_eos_penalty * (~rollout.has_eos).float()
        scores = scores.to(device)
        input_ids, attention_mask = rollout.input_ids.to(device), rollout.attention_mask.to(device)
        mask = rollout.completion_mask.to(device)  # (B, R)
        width = mask.shape[1]

        # ---- ALGO: log-probs, reference log-probs and values before the update, over the first pass's
        # micro-batches (so the first minibatch's ratio is exactly 1)
        first_order = pass_order(0)
        micro_chunks = [first_order[i : i + micro_batch] for i in range(0, len(rollout), micro_batch)]
        old_logps = torch.zeros_like(mask, dtype=torch.float32)
        ref_logps = torch.zeros_like(mask, dtype=torch.float32)
        old_values = torch.zeros_like(mask, dtype=torch.float32)
        with torch.no_grad():
            for chunk in micro_chunks:
                old_logps[chunk] = policy_forward(policy, chunk, False)[0]
                old_values[chunk] = value_forward(chunk)
            if cfg.kl_coef > 0:
                with unwrapped.disable_adapter() if cfg.lora_r else contextlib.nullcontext(), torch.inference_mode():
                    for chunk in micro_chunks:
                        ref_logps[chunk] = policy_forward(reference if reference is not None else policy, chunk, False)[0]
            else:
                ref_logps = old_logps

        # ---- ALGO: per-token KL-penalized rewards, GAE, whitened advantages --------------------------------
        kl = kl_estimate(old_logps, ref_logps, cfg.kl_estimator) * mask  # (B, R)
        rewards = kl_penalized_rewards(scores, kl, mask, kl_coef)  # (B, R)
        if cfg.whiten_rewards:
            rewards = masked_whiten(rewards, mask, shift_mean=False)
        advantages, returns = gae_advantages(rewards, old_values, mask, cfg.gamma, cfg.lam)
        advantages = masked_whiten(advantages, mask)
        is_weights = None
        if rollout.sampler_logps is not None:
            is_weights = truncated_is_weights(old_logps, rollout.sampler_logps.to(device), cfg.is_cap)

        # ---- ALGO: ppo_epochs passes of num_minibatches clipped policy + value updates ---------------------
        update_started = time.perf_counter()
        sums: dict[str, float] = {}
        counts: dict[str, int] = {}
        updates = plan.updates_in(rollout_index)  # fewer in a last rollout that --max-steps cuts short
        for epoch in range(math.ceil(updates / cfg.num_minibatches)):
            order = first_order if epoch == 0 else pass_order(epoch)
            for mb_index in range(min(cfg.num_minibatches, updates - epoch * cfg.num_minibatches)):
                mb_rows = order[mb_index * minibatch : (mb_index + 1) * minibatch]
                mb_tokens = mask[mb_rows].sum().clamp(min=1)
                chunks = [mb_rows[i : i + micro_batch] for i in range(0, len(mb_rows), micro_batch)]
                step_stats: dict[str, float] = {}
                for chunk_index, rows_ in enumerate(chunks):
                    last_chunk = chunk_index == len(chunks) - 1
                    with contextlib.nullcontext() if last_chunk else accelerator.no_sync(policy), contextlib.nullcontext() if last_chunk else accelerator.no_sync(critic):
                        logps, entropy = policy_forward(policy, rows_, with_entropy=epoch == 0)
                        values = value_forward(rows_)
                        m = mask[rows_]
                        weights = is_weights[rows_] if is_weights is not None else None
                        pg_loss, stats = clipped_policy_loss(logps, old_logps[rows_], advantages[rows_], m, cfg.clip_range, cfg.aggregation, weights)
                        vf_loss, value_stats = clipped_value_loss(values, old_values[rows_], returns[rows_], m, cfg.clip_range_value, cfg.aggregation)
                        loss = pg_loss + cfg.vf_coef * vf_loss
                        share = (m.sum() / mb_tokens) if cfg.aggregation == "token" else len(rows_) / len(mb_rows)
                        accelerator.backward(loss * share)
                    stats.update(value_stats)
                    stats["loss/policy"], stats["loss/value"] = pg_loss.detach(), vf_loss.detach()
                    if entropy is not None:
                        stats["policy/entropy"] = masked_mean(entropy, m)
                    for key, value in stats.items():
                        step_stats[key] = step_stats.get(key, 0.0) + float(value) * float(share)
                accelerator.clip_grad_norm_(policy.parameters(), cfg.max_grad_norm)
                accelerator.clip_grad_norm_(critic.parameters(), cfg.max_grad_norm)
                for opt, sched in ((optimizer, scheduler), (critic_optimizer, critic_scheduler)):
                    opt.step()
                    sched.step()
                    opt.zero_grad(set_to_none=True)
                global_step += 1
                if on_step is not None:
                    on_step(global_step, epoch, mb_index, step_stats)
                for key, value in step_stats.items():
                    sums[key], counts[key] = sums.get(key, 0.0) + value, counts.get(key, 0) + 1
                progress.advance(1, reward=float(scores.mean()))

        # ---- ALGO: adaptive KL controller (Ziegler et al. 2019) ---------------------------------------------
        seq_kl = masked_sum(kl, mask, dim=1)  # (B,)
        used_kl_coef = kl_coef
        if cfg.adaptive_kl:
            kl_coef = adaptive_kl_coef(kl_coef, float(seq_kl.mean()), cfg.kl_target, cfg.kl_horizon, plan.rollout_size)

        # ---- metrics, samples, checkpoint (plumbing) -------------------------------------------------------
        new_tokens = int(mask.sum())
        metrics = {
            "objective/scores": float(scores.mean()),
            "objective/kl": float(seq_kl.mean()),
            "objective/non_score_reward": float(-used_kl_coef * seq_kl.mean()),
            "objective/rlhf_reward": float((scores - used_kl_coef * seq_kl).mean()),
            "objective/kl_coef": used_kl_coef,
            "completions/mean_length": float(mask.sum(dim=1).float().mean()),
            "completions/clipped_ratio": float((~rollout.has_eos).float().mean()),
            **reward_metrics,
            **{key: sums[key] / counts[key] for key in sums},
            "val/returns": float(masked_mean(returns, mask)),
            "train/learning_rate": scheduler.get_last_lr()[0],
            "time/rollout_s": generated_s,
            "time/update_s": time.perf_counter() - update_started,
            "time/step_s": time.perf_counter() - started,
            "time/tokens_per_s": new_tokens / max(generated_s, 1e-9),
        }
        if rollout.sampler_logps is not None:  # vLLM: how far its log-probs are from the trainer's
            metrics.update(sampler_gap_metrics(old_logps, rollout.sampler_logps.to(device), mask, cfg.is_cap))
        metrics = mean_over_processes(accelerator, metrics)
        metrics["train/rollout"] = rollout_index + 1
        last = rollout_index + 1 == plan.total_rollouts
        if crossed(global_step, cfg.logging_steps) or last:
            logger.log(global_step, metrics)
        if cfg.sample_every and accelerator.is_main_process and (rollout_index % cfg.sample_every == 0 or last):
            write_samples(samples_path, global_step, rollout, scores.cpu(), cfg.num_samples, show=cfg.progress)
        if cfg.save_steps and crossed(global_step, cfg.save_steps) and not last:
            checkpointer.save(global_step, {"rollout": rollout_index + 1, "kl_coef": kl_coef})
    progress.close()
    logger.close()

    extra = {"algo": "ppo", "reward": list(cfg.reward), "critic": critic_note, "final_kl_coef": kl_coef}
    final = accelerator.unwrap_model(policy)
    if cfg.lora_r and cfg.merge:
        final = final.merge_and_unload()
    save_model_dir(final, tokenizer, output_dir, kind="policy", cfg=cfg, data_digest=rows_digest(rows), metrics=metrics, extra=extra, accelerator=accelerator)
    if accelerator.is_main_process:
        accelerator.unwrap_model(critic).model.save_pretrained(str(output_dir / "critic"))
    return output_dir
