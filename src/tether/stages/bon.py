"""`tether bon`: best-of-n. N responses per prompt from a policy, scored by a reward source, the best kept.

Two uses:
- **Evaluation policy** (Gao et al. 2022): best-of-n of the policy against the proxy, for every n <= N at once, with
  its KL in closed form (log n - (n-1)/n) and unbiased estimates of the proxy and gold of the kept response
  (`tether.math.best_of_n`: order statistics over the N samples, no resampling). `bon.json` holds the curve
  {n, kl, sqrt_kl, proxy, proxy_se, gold, gold_se, gain_se, drop_se} and the fitted Gao form d(α - βd) of the
  gains over n = 1; `tether report` draws it beside RL's curve. Each se is a standard error over prompts of the
  per-prompt estimates (gain_se and drop_se: of gold(n) - gold(1) and gold(n) - gold(N), paired by prompt).
- **Rejection sampling** (expert iteration, RAFT: Dong et al. 2023): `best.jsonl`, the kept response of each
  prompt, is SFT data ({"prompt", "completion"} rows, or {"messages"} for message-list prompts). One round:

      tether bon model=runs/sft/model reward=rm reward_model=runs/rm/model prompts=runs/world/prompts.jsonl \\
          n_prompts=600 n=16 out=runs/raft1
      tether sft model=runs/sft/model data=runs/raft1/best.jsonl out=runs/raft1/sft max_steps=60
      tether bon model=runs/raft1/sft/model ... out=runs/raft2          # the next round, from the new policy

  (No `iterations=` setting: a round is those two commands, and SFT's settings are its own stage's.)

The proxy is on the reward source's own scale (a reward model's Bradley-Terry scale, as PPO's eval/score); gold is
the world's (with `world=`, on its prompts). Samples are drawn at `temperature` with the KV-cache sampler
(`tether.rollout.sample`), N copies of each prompt in a batch, from one seeded generator.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch
from rich.console import Console

from tether.math.best_of_n import best_index, bon_estimates, bon_kl
from tether.chat import chat_format
from tether.chat_templates import check_template_setting
from tether.config import check, check_prompt_limit, save_config
from tether.data.formats import check_format, load_prompts
from tether.data.sft_data import write_conversations
from tether.errors import ConfigError
from tether.generation import cut_at_stop
from tether.models import check_positions, load_policy, load_tokenizer
from tether.monitor.gao import fit_gao_curve
from tether.progress import progress_bar
from tether.rewards_source import make_reward_source, prompt_text
from tether.rollout import sample

console = Console(stderr=True)


@dataclass
class BoNConfig:
    """Best-of-n sampling against a reward source: the kept responses, and the curve over n <= N."""

    model: str = "runs/sft/model"
    """Hugging Face model folder of the policy sampled from (tokenizer in the same folder)."""
    world: str = ""
    """World folder (e.g. runs/world): its gold reward is read off every sample (it picks only with reward=gold), and
    without `prompts` its held-out prompts are the ones sampled; "" for none (your own prompts, no gold)."""
    prompts: str = ""
    """Prompts file ({"prompt": str or messages} rows, or the prompts of TRL, HH-RLHF or UltraFeedback data);
    "" for the world's held-out prompts."""
    format: str = "auto"
    """Format of prompts: auto or a name from `tether data --help`."""
    n_prompts: int | None = 64
    """Prompts used: the first n of `prompts`, or n of the world's held-out prompts at an even stride (every
    category); None for all."""
    n: int = 16
    """N, the samples per prompt; the curve covers best-of-n for every n <= N, the kept response is the best of N."""
    reward: str = "rm"
    """What picks the best: rm (a reward model folder), gold (the world's reward), or callable (reward_fn)."""
    reward_model: str = "runs/rm/model"
    """Reward model folder (`tether rm`) for reward=rm."""
    reward_fn: str = ""
    """"module:function" scoring (prompts, responses) -> N floats, for reward=callable."""
    temperature: float = 1.0
    """Sampling temperature (1: the policy's own distribution, which the closed-form KL assumes)."""
    max_new_tokens: int = 48
    """Longest response in tokens."""
    batch_size: int = 64
    """Responses sampled together."""
    seed: int = 0
    """Seed of the sampling."""
    chat_template: str = ""
    """How prompts are formatted (tether.chat): "" the tokenizer's own template, a built-in name, a .jinja file, or
    "none"."""
    max_prompt_length: int | None = None
    """Longest prompt in tokens; longer ones drop earlier turns, then tokens from their start (None: no limit)."""
    trust_remote_code: bool = False
    """Run Python shipped with the model or reward model folder (only for folders you trust)."""
    out: str = "runs/bon"
    """Folder for bon.json, best.jsonl, samples.jsonl and config.yaml."""

    def validate(self) -> None:
        check_template_setting(self.chat_template)
        check(bool(self.model), "model", "a policy model folder is required")
        check(bool(self.world) or bool(self.prompts), "prompts", "give prompts=FILE, or world=FOLDER for its "
              "held-out prompts")
        check_format(self.format, "prompts")
        check(self.n_prompts is None or self.n_prompts >= 1, "n_prompts", "must be >= 1 or null")
        check(self.n >= 1, "n", "must be >= 1")
        check(self.reward in ("rm", "gold", "callable"), "reward", f"{self.reward!r} is not rm, gold or callable")
        check(self.reward != "rm" or bool(self.reward_model), "reward_model", "is required when reward=rm")
        check(self.reward != "gold" or bool(self.world), "world", "is required when reward=gold")
        check(self.reward != "callable" or ":" in self.reward_fn, "reward_fn", "must be 'module:function' when "
              "reward=callable")
        check(self.temperature > 0, "temperature", "must be > 0 (greedy decoding gives one response, not n)")
        check(self.max_new_tokens >= 1, "max_new_tokens", "must be >= 1")
        check(self.batch_size >= 1, "batch_size", "must be >= 1")
        check_prompt_limit(self.max_prompt_length)


def held_out_prompts(world, n: int | None) -> list[str]:
    """n of the world's held-out prompts at an even stride (the same ones PPO evaluates on for the same n)."""
    from tether.stages.online.evaluation import eval_prompt_texts

    return eval_prompt_texts(world, n) if n else [q.text for q in world.eval_queries()]


@torch.no_grad()
def sample_n(model, fmt, prompts: list, n: int, cfg: BoNConfig) -> list[list[str]]:
    """n responses per prompt (P lists of n texts) with the KV-cache sampler, one seeded generator throughout."""
    model.eval()
    repeated = [p for p in prompts for _ in range(n)]
    encoded = fmt.prompts_ids(repeated, cfg.max_prompt_length)
    check_positions(model, cfg.max_new_tokens, "max_new_tokens", prompt=max(map(len, encoded)))
    generator = torch.Generator(device=model.device).manual_seed(cfg.seed)
    texts: list[str] = []
    with progress_bar(f"best-of-{n} samples", total=len(repeated)) as bar:
        for start in range(0, len(encoded), cfg.batch_size):
            batch = encoded[start:start + cfg.batch_size]
            out = sample(model, batch, max_new_tokens=cfg.max_new_tokens, temperature=cfg.temperature,
                         eos_token_id=list(fmt.stop_ids), pad_token_id=fmt.pad_id, generator=generator)
            kept = [cut_at_stop(row, fmt.stop_ids)[0] for row in out.response_ids.tolist()]
            texts += [t.strip() for t in fmt.tokenizer.batch_decode(kept, skip_special_tokens=True)]
            bar.update(len(batch))
    return [texts[i * n:(i + 1) * n] for i in range(len(prompts))]


def score(source, prompts: list, responses: list[list[str]]) -> torch.Tensor:
    """(P, N) float64 proxy scores, on the source's own scale (`raw`, e.g. a reward model's Bradley-Terry scale)."""
    flat_prompts = [p for p, rs in zip(prompts, responses) for _ in rs]
    scores = source(flat_prompts, [r for rs in responses for r in rs])
    raw = getattr(source, "raw", None)
    return (raw(scores) if raw else scores).double().reshape(len(prompts), -1)


def _mean_se(per_prompt: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(n_max,) means over prompts of (P, n_max) estimates, and their standard errors (0 with one prompt)."""
    p = per_prompt.size(0)
    se = per_prompt.std(dim=0, correction=1) / p ** 0.5 if p > 1 else torch.zeros(per_prompt.size(1))
    return per_prompt.mean(dim=0), se


def bon_curve(proxy: torch.Tensor, gold: torch.Tensor | None) -> list[dict]:
    """{n, kl, sqrt_kl, proxy, proxy_se[, gold, gold_se, gain_se, drop_se]} for n = 1..N from (P, N) proxy and gold
    scores. gain_se and drop_se are the standard errors of gold(n) - gold(1) and gold(n) - gold(N), paired by
    prompt: the estimates of every n come from the same samples, so their differences are far less noisy than
    either level."""
    n_max = proxy.size(1)
    proxy_mean, proxy_se = _mean_se(bon_estimates(proxy, proxy))
    per_prompt = bon_estimates(proxy, gold) if gold is not None else None  # (P, N)
    curve = []
    for n in range(1, n_max + 1):
        kl = bon_kl(n)
        point = {"n": n, "kl": kl, "sqrt_kl": kl ** 0.5, "proxy": float(proxy_mean[n - 1]),
                 "proxy_se": float(proxy_se[n - 1])}
        curve.append(point)
    if per_prompt is not None:
        gold_mean, gold_se = _mean_se(per_prompt)
        _, gain_se = _mean_se(per_prompt - per_prompt[:, :1])
        _, drop_se = _mean_se(per_prompt - per_prompt[:, -1:])
        for n, point in enumerate(curve):
            point |= {"gold": float(gold_mean[n]), "gold_se": float(gold_se[n]), "gain_se": float(gain_se[n]),
                      "drop_se": float(drop_se[n])}
    return curve


def curve_fits(curve: list[dict]) -> dict:
    """The Gao et al. best-of-n form R(d) = d(α - βd) fitted to the proxy's and gold's gains over n = 1."""
    fits = {}
    for key in ("proxy", "gold"):
        if len(curve) < 3 or key not in curve[0]:
            continue
        fit = fit_gao_curve([p["kl"] for p in curve], [p[key] for p in curve], "bon")
        fits[key] = {"alpha": fit.alpha, "beta": fit.beta, "d_peak": fit.d_peak, "r_peak": fit.r_peak,
                     "rmse": fit.rmse}
    return fits


def _kept_rows(prompts: list, responses: list[list[str]], proxy: torch.Tensor) -> list:
    """The best response of each prompt as SFT data: (prompt, completion), or the messages with it appended."""
    best = best_index(proxy).tolist()
    rows = []
    for prompt, rs, i in zip(prompts, responses, best):
        if not rs[i]:
            continue  # an empty response teaches nothing and write_conversations rejects it
        rows.append((prompt, rs[i]) if isinstance(prompt, str) else [*prompt, {"role": "assistant", "content": rs[i]}])
    return rows


def _load(cfg: BoNConfig):
    world = None
    if cfg.world:
        from tether.world.build import load_world

        world = load_world(cfg.world)
    if cfg.prompts:
        prompts = load_prompts(cfg.prompts, cfg.format)[:cfg.n_prompts]
    else:
        prompts = held_out_prompts(world, cfg.n_prompts)
    if not prompts:
        raise ConfigError(f"prompts: no prompts in {cfg.prompts or cfg.world}")
    source = make_reward_source(cfg.reward, reward_model=cfg.reward_model, reward_fn=cfg.reward_fn, world=world,
                                trust_remote_code=cfg.trust_remote_code, members=False)
    return world, prompts, source


def run(cfg: BoNConfig) -> dict:
    """Sample, score, estimate the curve, keep the best: bon.json, best.jsonl, samples.jsonl; returns bon.json."""
    out = Path(cfg.out)
    # 1. Prompts, the reward source and the policy (bad settings fail before any sampling).
    world, prompts, source = _load(cfg)
    model = load_policy(cfg.model, trust_remote_code=cfg.trust_remote_code)
    fmt = chat_format(load_tokenizer(cfg.model, trust_remote_code=cfg.trust_remote_code), cfg.chat_template,
                      cfg.model)
    out.mkdir(parents=True, exist_ok=True)
    save_config(cfg, out / "config.yaml")
    # 2. N samples per prompt, each scored by the proxy and, with a world, by gold (read off, never picked by).
    responses = sample_n(model, fmt, prompts, cfg.n, cfg)
    proxy = score(source, prompts, responses)  # (P, N)
    gold = None
    if world is not None:
        gold = torch.tensor([[world.judge(prompt_text(p), r).reward for r in rs] for p, rs in zip(prompts, responses)],
                            dtype=torch.float64)  # (P, N)
    # 3. The curve over n <= N (unbiased order-statistics estimates, closed-form KL) and its Gao fits.
    curve = bon_curve(proxy, gold)
    result = {"n_samples": cfg.n, "prompts": len(prompts), "reward": cfg.reward, "temperature": cfg.temperature,
              "seed": cfg.seed, "model": cfg.model, "curve": curve, "fit": curve_fits(curve)}
    (out / "bon.json").write_text(json.dumps(result, indent=1))
    # 4. The kept responses (SFT data for rejection-sampling fine-tuning) and every sample with its scores.
    write_conversations(out / "best.jsonl", _kept_rows(prompts, responses, proxy))
    with (out / "samples.jsonl").open("w", encoding="utf-8") as f:
        for i, (p, rs) in enumerate(zip(prompts, responses)):
            row = {"prompt": p, "responses": rs, "proxy": proxy[i].tolist()}
            f.write(json.dumps(row | ({"gold": gold[i].tolist()} if gold is not None else {})) + "\n")
    _show(curve, cfg)
    return result


def _show(curve: list[dict], cfg: BoNConfig) -> None:
    shown = [p for p in curve if p["n"] & (p["n"] - 1) == 0 or p["n"] == len(curve)]  # powers of 2 and N
    gold = "gold" in curve[0]
    console.print(f"best-of-n ({cfg.reward}), {cfg.n} samples per prompt:\n  n   sqrt KL   proxy" +
                  ("    gold (se)" if gold else ""))
    for p in shown:
        console.print(f"  {p['n']:<3} {p['sqrt_kl']:7.3f}  {p['proxy']:+7.3f}" +
                      (f"  {p['gold']:+7.3f} ({p['gold_se']:.3f})" if gold else ""))
    console.print(f"written to {cfg.out}/ (bon.json, best.jsonl, samples.jsonl)")
