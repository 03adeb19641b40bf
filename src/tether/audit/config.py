"""The settings of `tether audit` (`AuditConfig`) and the models it audits (`Target`)."""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from urllib.parse import urlparse

from tether.chat_templates import check_template_setting
from tether.config import check, check_prompt_limit
from tether.data.formats import check_format
from tether.monitor.judge import JudgeFields

SUITES = ("xstest", "sycophancy", "style")
"""Built-in suites: XSTest over-refusal and harmful compliance, the two sycophancy protocols, and style measures on
the suites' responses (style is always measured on the workload)."""


@dataclass(frozen=True)
class Target:
    """One audited model: a model folder or a model behind an endpoint."""

    name: str
    """Its column in the tables, its key in audit.json, its cache file name."""
    kind: str
    """"model" (a folder) or "endpoint"."""
    source: str
    """The folder or the endpoint's base URL."""
    endpoint_model: str = ""
    """The model name sent to the endpoint ("" for the only one it serves)."""


@dataclass
class AuditConfig(JudgeFields):
    """Audit models or endpoints side by side: over-refusal and harmful compliance (XSTest), sycophancy (Sharma et
    al. 2023) and style (hedging, verbosity, flattery, padding, refusal) on built-in suites and your own prompts."""

    model: list[str] = field(default_factory=list)
    """Model folders to audit (tokenizer in the same folder), e.g. model=[runs/sft/model,runs/ppo/model]."""
    endpoint: list[str] = field(default_factory=list)
    """Base URLs of OpenAI-compatible APIs to audit (tether serve, vLLM, OpenAI, ...), e.g.
    endpoint=[http://127.0.0.1:8000/v1]; audited after the model folders."""
    endpoint_model: list[str] = field(default_factory=list)
    """The model name sent to each endpoint, in endpoint's order ([] or "" for the only model its /models lists)."""
    names: list[str] = field(default_factory=list)
    """A name for each audited model, model folders first, then endpoints ([]: a folder's name (runs/ppo/model ->
    ppo), an endpoint's model name or host:port). The first is the reference the others are compared with."""
    api_key_env: str = ""
    """Environment variable holding the endpoints' API key (sent as `Authorization: Bearer`); "" for none."""
    endpoint_concurrency: int = 8
    """Requests in flight at once, per endpoint."""
    endpoint_timeout: float = 120.0
    """Seconds one request may take before it is retried."""
    endpoint_retries: int = 6
    """Retries of a request after a timeout, a 429 or a 5xx, with exponential backoff."""
    prompts: str = ""
    """Your workload: a prompts file in any format `tether data` reads (JSONL {"prompt": str or messages}, Parquet,
    HH-RLHF, TRL, UltraFeedback: each distinct prompt once); its responses get the style measures. "" for none."""
    format: str = "auto"
    """Format of prompts: auto (told from the first row's keys) or a name from `tether data --help`."""
    split: str | None = None
    """Split of prompts when it is a `datasets` save_to_disk DatasetDict folder; None for a file."""
    suites: list[str] = field(default_factory=lambda: list(SUITES))
    """Built-in suites: xstest (XSTest's 250 safe and 200 unsafe prompts), sycophancy (fact questions, neutral, with
    a wrong suggestion, and under "Are you sure?" pushback), style (the style measures on those suites' responses
    too)."""
    facts: str = ""
    """Your own fact questions for the sycophancy suite, JSONL {"question", "answer", "wrong", "aliases",
    "wrong_aliases", "id", "category"} (the shape of tether/audit/data/facts.jsonl); "" for none."""
    starter_facts: bool = True
    """Ask the shipped 60 fact questions (capitals, arithmetic, science, geography) in the sycophancy suite."""
    world: str = ""
    """World folder (from `tether world`): its held-out fact questions join the sycophancy suite; "" for none."""
    limit: int | None = None
    """At most this many prompts per suite (XSTest and facts spread over their types and categories, the workload's
    first ones), for a quick run; None for all."""
    temperature: float = 0.0
    """Sampling temperature; 0 is greedy decoding."""
    samples_per_prompt: int = 1
    """Responses per prompt (use > 1 with temperature > 0); every rate counts each response."""
    max_new_tokens: int = 256
    """Longest response in tokens."""
    seed: int = 0
    """Sampling seed; response k of a prompt samples with its own seed derived from it (tether.endpoint), the same
    for a model folder and for that model behind `tether serve`."""
    max_prompt_length: int | None = None
    """Longest prompt in tokens for model folders; longer ones drop earlier turns, then tokens from their start
    (None: no limit). Endpoints format and cut prompts themselves."""
    chat_template: str = ""
    """How model folders format prompts (tether.chat): "" the tokenizer's own template, a built-in name, a .jinja
    file, or "none" (plain text). Endpoints apply their own."""
    batch_size: int = 16
    """Prompts a model folder answers together."""
    device: str = "auto"
    """Device of model folders (and a judge_model): auto (cuda when available, else cpu), cpu, cuda, cuda:N, mps."""
    reference: str = ""
    """Name of the audited model whose response length to each prompt is the baseline of verbosity ("" for the
    median length of all responses to the suite)."""
    out: str = "runs/audit"
    """Folder for audit.json, audit.html, audit_samples.jsonl, config.yaml, cache/<name>.jsonl (every response,
    keyed by request: a rerun resumes without asking again; use a new folder when a model behind an endpoint has
    changed) and judge_cache.jsonl."""

    def validate(self) -> None:
        check(bool(self.model or self.endpoint), "model", "give model folders (model=[A,B]) and/or endpoints "
              "(endpoint=[URL,...]) to audit")
        for url in self.endpoint:
            check(url.startswith(("http://", "https://")), "endpoint", f"{url!r} is not an http:// or https:// URL")
        check(not self.endpoint_model or len(self.endpoint_model) == len(self.endpoint), "endpoint_model",
              f"give one name per endpoint ({len(self.endpoint)}), or none")
        n = len(self.model) + len(self.endpoint)
        check(not self.names or len(self.names) == n, "names", f"give one name per audited model ({n}: model "
              "folders first, then endpoints), or none")
        names = [t.name for t in self.targets()]
        check(len(set(names)) == len(names), "names", f"audited models need distinct names, got {names}; set "
              "names=[...]")
        check(set(self.suites) <= set(SUITES), "suites", f"unknown suite in {self.suites}; choose from "
              f"{', '.join(SUITES)}")
        check(bool(self.prompts) or bool({"xstest", "sycophancy"} & set(self.suites)), "suites",
              "nothing to audit: give prompts=FILE or one of the suites xstest, sycophancy")
        check(not ("sycophancy" in self.suites) or self.starter_facts or self.facts or self.world, "starter_facts",
              "the sycophancy suite needs questions: starter_facts=true, facts=FILE or world=FOLDER")
        check_format(self.format, "prompts")
        check_template_setting(self.chat_template)
        check_prompt_limit(self.max_prompt_length)
        check(self.limit is None or self.limit >= 1, "limit", "must be >= 1 or null")
        check(self.temperature >= 0, "temperature", "must be >= 0")
        for name in ("samples_per_prompt", "max_new_tokens", "batch_size", "endpoint_concurrency"):
            check(getattr(self, name) >= 1, name, "must be >= 1")
        check(self.endpoint_timeout > 0, "endpoint_timeout", "must be > 0")
        check(self.endpoint_retries >= 0, "endpoint_retries", "must be >= 0")
        check(self.device == "auto" or re.fullmatch(r"cpu|mps|cuda(:\d+)?", self.device), "device",
              "must be auto, cpu, cuda, cuda:N or mps")
        check(not self.reference or self.reference in names, "reference", f"{self.reference!r} is not one of the "
              f"audited models {names}")
        self.check_judge()

    def targets(self) -> list[Target]:
        """The audited models in order: model folders, then endpoints, named by `names` or by default."""
        from tether.serve import ServeConfig  # its served_name: runs/ppo/model -> "ppo" (no torch imported)

        targets = [Target(ServeConfig(model=m).served_name, "model", m) for m in self.model]
        for i, url in enumerate(self.endpoint):
            model = self.endpoint_model[i] if self.endpoint_model else ""
            targets.append(Target(model or urlparse(url).netloc or url, "endpoint", url, model))
        if self.names:
            targets = [Target(name, t.kind, t.source, t.endpoint_model) for name, t in zip(self.names, targets)]
        return targets

    def decoding(self) -> dict:
        """What every rate depends on besides the model, written into audit.json."""
        return {"temperature": self.temperature, "samples_per_prompt": self.samples_per_prompt, "seed": self.seed,
                "max_new_tokens": self.max_new_tokens, "max_prompt_length": self.max_prompt_length,
                "chat_template": self.chat_template}
