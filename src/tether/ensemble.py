"""Reward-model ensembles (Coste et al. 2023, "Reward Model Ensembles Help Mitigate Overoptimization"): where
`tether rm ensemble=k` puts its members, and the reward source that scores with all of them.

On disk: member 0 is the plain reward-model folder `out/model` (what `ensemble=1` writes, read by everything that
reads one reward model), and its reward_config.json lists the others under "members", as paths relative to it
(`members/member-<i>`, inside the folder, so that it moves as one). Each member's training logs are in
`out/members/member-<i>/`. Members after the first train on a bootstrap resample of the comparisons: of the prompt
groups (`bootstrap_by_prompt`) or of the raters (`bootstrap_by_rater`), RMConfig.ensemble_unit.

The source scores N responses with each member, (k, N), trains on `ENSEMBLE_REWARDS[reward_ensemble]` of them
(tether.math.ensemble: member 0 alone, the mean, the worst case, or the uncertainty-weighted mean), and keeps the
members' disagreement per response (their standard deviation) for the monitor's `ensemble_disagreement` detector.
"""
from __future__ import annotations

import json
import random
from collections.abc import Sequence
from pathlib import Path

import torch

from tether.errors import DataError, TetherError
from tether.math.ensemble import ENSEMBLE_REWARDS, member_std

MEMBERS_KEY = "members"
"""The key of a reward model's reward_config.json listing the other ensemble members (paths relative to it)."""


def member_model_dir(out: str | Path, member: int) -> Path:
    """The model folder of member `member` of the ensemble trained into the run folder `out`."""
    return Path(out) / "model" if member == 0 else Path(out) / "model" / MEMBERS_KEY / f"member-{member}"


def member_paths(out: str | Path, member: int, seed: int) -> tuple[Path, Path, int]:
    """(run folder for its logs and checkpoints, model folder, seed) of member `member`; member 0 is the plain
    reward model with the run's own folder and seed. The other seeds are far apart so that no two members of
    neighbouring runs (seed, seed + 1) share one."""
    if member == 0:
        return Path(out), member_model_dir(out, 0), seed
    return Path(out) / MEMBERS_KEY / f"member-{member}", member_model_dir(out, member), seed + 1_000_003 * member


def bootstrap_by_prompt(pairs: list, seed: int) -> list:
    """A bootstrap resample of `pairs` by prompt: as many prompt groups as there are, drawn with replacement (a
    comparison's pairs stay together; a group drawn twice counts twice). `pairs` need a `prompt_key`."""
    groups: dict[str, list] = {}
    for p in pairs:
        groups.setdefault(p.prompt_key, []).append(p)
    keys = list(groups)
    rng = random.Random(seed)
    return [p for _ in keys for p in groups[rng.choice(keys)]]


def bootstrap_by_rater(pairs: list, seed: int) -> list:
    """A cluster bootstrap of `pairs` by rater: as many raters as there are, drawn with replacement, each bringing
    every pair it labelled (a rater drawn twice counts twice). `pairs` need a `rater`; DataError when one has none
    or when there is a single rater (every resample would be the same labels)."""
    unknown = sum(p.rater is None for p in pairs)
    if unknown:
        raise DataError(f"ensemble_unit=rater: {unknown} of {len(pairs)} training comparisons have no `rater` "
                        "(label them with rater ids, or set ensemble_unit=prompt)")
    by_rater: dict[str, list] = {}
    for p in pairs:
        by_rater.setdefault(p.rater, []).append(p)
    if len(by_rater) < 2:
        raise DataError(f"ensemble_unit=rater: the training comparisons have one rater ({next(iter(by_rater), '')}): "
                        "every resample would be the same labels (set ensemble_unit=prompt)")
    raters = sorted(by_rater)
    rng = random.Random(seed)
    return [p for _ in raters for p in by_rater[rng.choice(raters)]]


BOOTSTRAPS = {"prompt": bootstrap_by_prompt, "rater": bootstrap_by_rater}
"""RMConfig.ensemble_unit -> the resample (pairs, seed) -> pairs of each ensemble member after the first."""


def write_members(model_dir: Path, k: int) -> None:
    """List members 1..k-1 in member 0's reward_config.json."""
    config_file = Path(model_dir) / "reward_config.json"
    config = json.loads(config_file.read_text())
    config[MEMBERS_KEY] = [f"{MEMBERS_KEY}/member-{i}" for i in range(1, k)]
    config_file.write_text(json.dumps(config, indent=1))


def member_dirs(model_dir: str | Path) -> list[Path]:
    """The model folders of an ensemble, member 0 (`model_dir`) first; [model_dir] for a single reward model."""
    model_dir = Path(model_dir)
    config_file = model_dir / "reward_config.json"
    if not config_file.is_file():  # the folder itself: a typo, or a policy where a reward model was meant
        what = "does not exist" if not model_dir.exists() else "has no reward_config.json; is it a reward model?"
        raise TetherError(f"reward model: {model_dir} {what} (train one with `tether rm`)")
    listed = json.loads(config_file.read_text()).get(MEMBERS_KEY, [])
    dirs = [model_dir, *(model_dir / m for m in listed)]
    missing = [str(d) for d in dirs if not (d / "reward_config.json").is_file()]
    if missing:
        raise TetherError(f"reward model: ensemble member {missing[0]} is missing (listed in {config_file})")
    return dirs


class EnsembleSource:
    """The reward of an ensemble folder: `aggregate` of the members' normalised scores (tether.math.ensemble
    ENSEMBLE_REWARDS: single, mean, min, uwo with λ = `lam`). After each call `last_scores` holds the members'
    scores (k, N) and `last_std` their disagreement per response (N,)."""

    def __init__(self, path: str, aggregate: str = "single", lam: float = 0.5, batch_size: int = 32,
                 trust_remote_code: bool = False):
        from tether.reward import RewardModel  # heavy (transformers): only when this source is used

        if aggregate not in ENSEMBLE_REWARDS:
            raise TetherError(f"reward_ensemble: {aggregate!r} is not one of {', '.join(ENSEMBLE_REWARDS)}")
        self.members = [RewardModel.from_pretrained(d, trust_remote_code=trust_remote_code).eval()
                        for d in member_dirs(path)]
        for m in self.members:
            m.requires_grad_(False)
        self.model = self.members[0]  # member 0: its normalisation gives `raw`; the stage moves `members`
        self.aggregate, self.lam, self.batch_size = aggregate, lam, batch_size
        self.last_scores: torch.Tensor | None = None
        self.last_std: torch.Tensor | None = None

    @property
    def k(self) -> int:
        return len(self.members)

    def member_scores(self, prompts: Sequence, responses: Sequence[str]) -> torch.Tensor:
        """Each member's normalised scores. (k, N) float32 on the CPU."""
        return torch.stack([m.score(list(prompts), list(responses), self.batch_size) for m in self.members])

    def __call__(self, prompts: Sequence, responses: Sequence[str]) -> torch.Tensor:
        scores = self.member_scores(prompts, responses)  # (k, N)
        self.last_scores, self.last_std = scores, member_std(scores)
        return ENSEMBLE_REWARDS[self.aggregate](scores, self.lam).float()  # (N,)

    def raw(self, scores: torch.Tensor) -> torch.Tensor:
        """On member 0's Bradley-Terry scale: (s - bias) / gain (exact for reward_ensemble=single). (N,) -> (N,)."""
        return (scores - float(self.model.bias)) / float(self.model.gain)
