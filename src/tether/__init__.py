"""tether: RLHF end to end (SFT, preferences, reward models, RL with a KL tether, and the audit)."""

__version__ = "0.1.0"
