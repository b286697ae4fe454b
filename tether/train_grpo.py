"""GRPO and RLOO: critic-free policy optimization with a group baseline, in one readable loop.

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

import contextlib
import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from tether.config import GRPOConfig


def train_grpo(cfg: GRPOConfig, *, on_step: Callable[[int, int, int, dict[str, float]], None] | None = None) -> Path:
    """Train with GRPO or RLOO (``cfg.algo``) and save the policy to ``cfg.output_dir``; returns the folder.

    ``on_step(step, epoch, minibatch, stats)`` is called after every optimizer step (tests use it).
    """
    from tether.data.canonical import rows_digest
    from tether.math.losses import (
        aggregate_loss,
        clipped_policy_loss,
        group_advantages,
        kl_estimate,
        leave_one_out_advantages,
        masked_sum,
        truncated_is_weights,
    )
    from tether.models.hf import apply_lora, disable_dropout, load_causal_lm, load_tokenizer, refuse_adapter
    from tether.models.logprobs import completion_logps
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

    # ---- setup: data, reward, models, optimizer (plumbing) -------------------------------------------------
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
    kl_in_reward = cfg.kl_in_reward if cfg.kl_in_reward is not None else cfg.algo == "rloo"

    optimizer = make_optimizer(policy, cfg)
    scheduler = make_scheduler(optimizer, cfg, total_steps)
    policy, optimizer = accelerator.prepare(policy, optimizer)
    # Not prepare(): Accelerate's scheduler wrapper steps once per process, and total_steps already counts global steps.
    accelerator.register_for_checkpointing(scheduler)
    vllm = None
    if cfg.sampler == "vllm":
        vllm = VLLMSampler(cfg.model, gpu_memory_utilization=cfg.vllm_gpu_memory_utilization, max_model_len=cfg.max_length, seed=cfg.seed, bf16=cfg.bf16)
    output_dir = Path(cfg.output_dir)
    logger = MetricsLogger(output_dir, cfg, run_name=f"{cfg.algo}-{output_dir.name}", accelerator=accelerator)
    state = checkpointer.restore()
    start_rollout, global_step = state.get("rollout", 0), state.get("step", 0)
    device = accelerator.device
    samples_path = output_dir / "samples.jsonl"
    metrics: dict[str, float] = {}

    def policy_forward(model: Any, rows_: torch.Tensor, with_entropy: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
        with accelerator.autocast():
            return completion_logps(model, input_ids[rows_], attention_mask[rows_], width, cfg.temperature, with_entropy, cfg.share_prompts)

    def crossed(step: int, every: int) -> bool:
        """True when this rollout's updates passed a multiple of ``every`` optimizer steps."""
        return step // every > (step - updates_per_rollout) // every

    def pass_order(epoch: int) -> torch.Tensor:
        """This pass's row order over the rollout, fixed by (seed, rollout, epoch)."""
        return update_order(len(rollout), minibatch, cfg.seed * 1_000_003 + rollout_index * 1_009 + epoch).to(device)

    progress = Progress(total_steps, cfg.algo.upper(), enabled=cfg.progress and accelerator.is_main_process, completed=global_step)
    for rollout_index in range(start_rollout, plan.total_rollouts):
        # ---- ALGO: sample group_size completions for each prompt ------------------------------------------
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

        # ---- ALGO: score; a completion cut before EOS may be penalized -------------------------------------
        scores, reward_metrics = reward.score(rollout.prompts, rollout.prompt_texts, rollout.completion_texts)
        if cfg.missing_eos_penalty is not None:
            scores = scores - cfg.missing_eos_penalty * (~rollout.has_eos).float()
        scores = scores.to(device)
        input_ids, attention_mask = rollout.input_ids.to(device), rollout.attention_mask.to(device)
        mask = rollout.completion_mask.to(device)  # (B, R)
        width = mask.shape[1]

        # ---- ALGO: log-probs before the update, over the first pass's micro-batches (so its ratio is exactly 1)
        first_order = pass_order(0)
        micro_chunks = [first_order[i : i + micro_batch] for i in range(0, len(rollout), micro_batch)]
        need_old = cfg.ppo_epochs > 1 or cfg.num_minibatches > 1 or rollout.sampler_logps is not None or (kl_in_reward and cfg.kl_coef > 0)
        old_logps = ref_logps = None
        with torch.no_grad():
            if need_old:
                old_logps = torch.zeros_like(mask, dtype=torch.float32)
                for chunk in micro_chunks:
                    old_logps[chunk] = policy_forward(policy, chunk, False)[0]
            if cfg.kl_coef > 0:
                ref_logps = torch.zeros_like(mask, dtype=torch.float32)
                adapter_off = unwrapped.disable_adapter() if cfg.lora_r else contextlib.nullcontext()
                with adapter_off, torch.inference_mode():
                    for chunk in micro_chunks:
                        ref_logps[chunk] = policy_forward(reference if reference is not None else policy, chunk, False)[0]

        # ---- ALGO: advantages within each prompt's group ---------------------------------------------------
        seq_kl = torch.zeros_like(scores)  # (B,) summed per-token KL estimate, filled before or during pass 0
        if kl_in_reward and ref_logps is not None:
            seq_kl = masked_sum(kl_estimate(old_logps, ref_logps, cfg.kl_estimator), mask, dim=1)
            rewards = scores - cfg.kl_coef * seq_kl
        else:
            rewards = scores
        if cfg.algo == "grpo":
            advantages = group_advantages(rewards, cfg.group_size, scale_by_std=cfg.scale_rewards)
        else:
            advantages = leave_one_out_advantages(rewards, cfg.group_size)
        is_weights = None
        if rollout.sampler_logps is not None:
            is_weights = truncated_is_weights(old_logps, rollout.sampler_logps.to(device), cfg.is_cap)

        # ---- ALGO: ppo_epochs passes of num_minibatches clipped updates ------------------------------------
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
                    sync = contextlib.nullcontext() if chunk_index == len(chunks) - 1 else accelerator.no_sync(policy)
                    with sync:
                        logps, entropy = policy_forward(policy, rows_, with_entropy=epoch == 0)
                        m = mask[rows_]
                        old = old_logps[rows_] if old_logps is not None else logps.detach()
                        weights = is_weights[rows_] if is_weights is not None else None
                        loss, stats = clipped_policy_loss(logps, old, advantages[rows_].unsqueeze(1), m, cfg.clip_range, cfg.aggregation, weights)
                        if ref_logps is not None:
                            kl_tokens = kl_estimate(logps, ref_logps[rows_], cfg.kl_estimator)
                            if not kl_in_reward:
                                loss = loss + cfg.kl_coef * aggregate_loss(kl_tokens, m, cfg.aggregation)
                                if epoch == 0:
                                    seq_kl[rows_] = masked_sum(kl_tokens.detach(), m, dim=1)
                        share = (m.sum() / mb_tokens) if cfg.aggregation == "token" else len(rows_) / len(mb_rows)
                        accelerator.backward(loss * share)
                    stats["loss/policy"] = loss.detach()
                    if entropy is not None:
                        stats["policy/entropy"] = (entropy * m).sum() / m.sum().clamp(min=1)
                    for key, value in stats.items():
                        step_stats[key] = step_stats.get(key, 0.0) + float(value) * float(share)
                accelerator.clip_grad_norm_(policy.parameters(), cfg.max_grad_norm)
                optimizer.step()
                scheduler.step()
                optimizer.zero_grad(set_to_none=True)
                global_step += 1
                if on_step is not None:
                    on_step(global_step, epoch, mb_index, step_stats)
                for key, value in step_stats.items():
                    sums[key], counts[key] = sums.get(key, 0.0) + value, counts.get(key, 0) + 1
                progress.advance(1, reward=float(scores.mean()))

        # ---- metrics, samples, checkpoint (plumbing) -------------------------------------------------------
        new_tokens = int(mask.sum())
        metrics = {
            "objective/scores": float(scores.mean()),
            "objective/kl": float(seq_kl.mean()),
            "objective/rlhf_reward": float((scores - cfg.kl_coef * seq_kl).mean()),
            "objective/advantage_std": float(advantages.std()) if len(advantages) > 1 else 0.0,
            "completions/mean_length": float(mask.sum(dim=1).float().mean()),
            "completions/clipped_ratio": float((~rollout.has_eos).float().mean()),
            **reward_metrics,
            **{key: sums[key] / counts[key] for key in sums},
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
            checkpointer.save(global_step, {"rollout": rollout_index + 1})
    progress.close()
    logger.close()

    final = accelerator.unwrap_model(policy)
    if cfg.lora_r and cfg.merge:
        final = final.merge_and_unload()
    save_model_dir(
        final, tokenizer, output_dir, kind="policy", cfg=cfg, data_digest=rows_digest(rows), metrics=metrics,
        extra={"algo": cfg.algo, "reward": list(cfg.reward)}, accelerator=accelerator,
    )
    return output_dir
