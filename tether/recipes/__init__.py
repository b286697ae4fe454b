"""Training recipes: one module per trainer, and what they share (runtime, online RL, reference log-probs, configs)."""
