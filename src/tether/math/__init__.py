"""The math of tether as pure functions of tensors: LM and reward-model losses, the DPO family and KTO, PPO and
GRPO losses, KL estimators and controllers, advantages, reward-model metrics, rater agreement.

The modules import only torch and the standard library (tests/test_structure.py), and this file imports none of
them, so the rater app reads `tether.math.agreement` without torch.
"""
