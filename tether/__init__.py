"""Tether: an open-source RLHF platform.

Collect human feedback, control its quality, train reward models and policies (SFT, PPO, GRPO, RLOO, DPO, IPO,
KTO), evaluate, govern and monitor. See README.md for the quickstart.
"""

__version__ = "0.1.0"
