"""`tether collect`: sample responses from one or more policies and pair them into a comparison queue.

The queue (`queue.jsonl`, tether's preference format with no choice yet) is what raters label: the
rater app for people, `tether label` for the world's simulated raters. Each comparison records which
policy wrote each response (InstructGPT sampled from several policies; mixing the SFT policy with
the base model lets the raters see the base distribution's styles too).
"""
from __future__ import annotations

import itertools
import json
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar, Literal

from rich.console import Console

from tether.chat import chat_format
from tether.chat_templates import check_template_setting
from tether.config import check, check_prompt_limit, save_config
from tether.data.formats import check_format, load_prompts
from tether.data.preferences import Comparison, write_comparisons
from tether.endpoint import CACHE_FILE, EndpointFields
from tether.generation import generate
from tether.models import load_policy, load_tokenizer

console = Console(stderr=True)


@dataclass
class CollectConfig(EndpointFields):
    """Sample K responses per prompt and form comparison pairs with provenance."""

    RENAMED: ClassVar[dict[str, str]] = {"policies": "model"}
    model: list[str] = field(default_factory=lambda: ["runs/sft/model"])
    """Policy model folder, or several (model=[a,b]): the K responses of a prompt are shared round-robin among them;
    empty (model=) with endpoint=URL."""
    prompts: str = "runs/world/prompts.jsonl"
    """Prompts: {"prompt": str or messages} rows, or the prompts of TRL, HH-RLHF or UltraFeedback data (each
    distinct prompt once); JSONL, Parquet, Arrow or a save_to_disk folder."""
    format: str = "auto"
    """Format of prompts: auto (told from the first row's keys) or a name from `tether data --help`:
    prompts, hh, trl, ultrafeedback_binarized, ultrafeedback, ..."""
    split: str | None = None
    """Split of prompts when it is a `datasets` save_to_disk DatasetDict folder (e.g. train_prefs);
    None for a file."""
    n_prompts: int | None = None
    """Use only the first n prompts (None: all)."""
    responses_per_prompt: int = 4
    """K responses sampled per prompt (duplicates and empty responses are dropped and counted)."""
    temperature: float = 1.0
    """Sampling temperature."""
    top_p: float = 1.0
    """Nucleus sampling threshold."""
    max_new_tokens: int = 48
    """Longest response in tokens."""
    pairs: Literal["all", "sampled"] = "all"
    """Pair every two distinct responses of a prompt, or sample pairs_per_prompt of them."""
    pairs_per_prompt: int = 2
    """Pairs per prompt when pairs=sampled."""
    batch_size: int = 64
    """Prompts generated together."""
    seed: int = 0
    """Sampling and pairing seed."""
    out: str = "runs/collect"
    """Folder for queue.jsonl, report.json and config.yaml."""
    chat_template: str = ""
    """How prompts are formatted for every policy (tether.chat): "" each tokenizer's own template, a built-in name
    (chatml, llama3, gemma, zephyr, hh, tether), a .jinja file, or "none" (plain text)."""
    max_prompt_length: int | None = None
    """Longest prompt in tokens; longer ones drop earlier turns, then tokens from their start (None: no limit)."""

    def validate(self) -> None:
        self.check_source(bool(self.model))
        check(not self.endpoint or (not self.chat_template and self.max_prompt_length is None), "endpoint",
              "the server formats and cuts prompts itself: leave chat_template and max_prompt_length unset")
        check_format(self.format, "prompts")
        check(self.responses_per_prompt >= 2, "responses_per_prompt", "must be >= 2 to form pairs")
        check(self.temperature > 0, "temperature", "must be > 0 (greedy decoding gives identical responses)")
        check(0 < self.top_p <= 1, "top_p", "must be in (0, 1]")
        check(self.pairs_per_prompt >= 1, "pairs_per_prompt", "must be >= 1")
        check(self.n_prompts is None or self.n_prompts >= 1, "n_prompts", "must be >= 1 or null")
        check_prompt_limit(self.max_prompt_length)
        check_template_setting(self.chat_template)


def _sample(cfg: CollectConfig, prompts: list) -> list[list[tuple[str, str]]]:
    """Per prompt, the (response, policy) samples, K in all shared round-robin among the policies."""
    samples: list[list[tuple[str, str]]] = [[] for _ in prompts]
    client = cfg.endpoint_client() if cfg.endpoint else None
    policies = [client.model] if client else cfg.model
    for p, policy in enumerate(policies):
        k = len(range(p, cfg.responses_per_prompt, len(policies)))
        if k == 0:
            continue
        repeated = [i for i in range(len(prompts)) for _ in range(k)]
        folder = Path(policy)
        label = f"collect {(folder.parent.name if folder.name == 'model' else folder.name) or policy}"  # runs/sft/model: sft
        if client:  # replies cached in <out>/endpoint_cache.jsonl: an interrupted collect resumes
            texts = [r.text for r in client.replies([prompts[i] for i in repeated], max_new_tokens=cfg.max_new_tokens,
                                                    temperature=cfg.temperature, top_p=cfg.top_p, seed=cfg.seed + p,
                                                    cache=Path(cfg.out) / CACHE_FILE, label=label)]
        else:
            model, tokenizer = load_policy(policy), load_tokenizer(policy)
            fmt = chat_format(tokenizer, cfg.chat_template, policy)
            texts = generate(model, fmt, [prompts[i] for i in repeated], cfg.max_new_tokens, cfg.temperature,
                             cfg.batch_size, cfg.seed + p, label, cfg.top_p, cfg.max_prompt_length)
        for i, text in zip(repeated, texts):
            samples[i].append((text, policy))
    return samples


def make_pairs(prompt, samples: list[tuple[str, str]], cfg: CollectConfig, rng: random.Random,
               report: dict) -> list[Comparison]:
    """Distinct non-empty responses of one prompt, paired (order randomised, so A is not always policy 1)."""
    seen: dict[str, str] = {}
    for text, policy in samples:
        text = text.strip()  # responses equal up to surrounding whitespace are the same response
        if not text:
            report["empty_responses"] += 1
        elif text in seen:
            report["duplicate_responses"] += 1
        else:
            seen[text] = policy
    pairs = list(itertools.combinations(seen.items(), 2))
    if cfg.pairs == "sampled":
        pairs = rng.sample(pairs, min(cfg.pairs_per_prompt, len(pairs)))
    out = []
    for a, b in pairs:
        a, b = (a, b) if rng.random() < 0.5 else (b, a)
        out.append(Comparison(prompt, a[0], b[0], source_a=a[1], source_b=b[1],
                              meta={"temperature": cfg.temperature, "top_p": cfg.top_p}))
    return out


def run(cfg: CollectConfig) -> Path:
    prompts = load_prompts(cfg.prompts, cfg.format, cfg.split)[:cfg.n_prompts]
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    save_config(cfg, out / "config.yaml")
    rng = random.Random(cfg.seed)
    report = {"prompts": len(prompts), "responses": 0, "empty_responses": 0, "duplicate_responses": 0}
    queue = []
    for prompt, samples in zip(prompts, _sample(cfg, prompts)):
        report["responses"] += len(samples)
        queue += make_pairs(prompt, samples, cfg, rng, report)
    report["pairs"] = len(queue)
    write_comparisons(out / "queue.jsonl", queue)
    (out / "report.json").write_text(json.dumps(report, indent=1))
    console.print(f"collect: {report['pairs']} pairs from {len(prompts)} prompts "
                  f"({report['duplicate_responses']} duplicate and {report['empty_responses']} empty responses dropped)")
    return out / "queue.jsonl"
