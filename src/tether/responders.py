"""Replies from a model folder or an OpenAI-compatible endpoint behind one interface, cached on disk either way.

`Responder.replies(prompts, max_new_tokens=, temperature=, seed=, cache=)` gives one `tether.endpoint.Reply` (text,
tokens, ended) per prompt, in order; a prompt repeated k times gets k samples. `EndpointClient` is one;
`LocalResponder` is the other, for a model folder: it keys each reply the way the endpoint client does (the same
request body, its "model" naming the folder) in the same kind of cache file (`tether.endpoint.ReplyCache`), so an
interrupted `tether audit` of a local model resumes without generating anything twice, and it draws each row's
sampling noise from the seed that `tether serve` would give the same request (`tether.rollout.row_noise` of
`sample_seed(request seed, 0, 0)`), so a model folder and the same model behind `tether serve` give the same
samples, at any temperature (up to float rounding in padded batches). The model is loaded only when a reply is
missing from the cache: a finished audit reruns without loading it.
"""
from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Protocol

from tether.endpoint import Reply, ReplyCache, request_body, request_key, sample_indices
from tether.progress import progress_bar


class Responder(Protocol):
    """Anything that answers prompts: `EndpointClient`, `LocalResponder`, or a test's stand-in."""

    def replies(self, prompts: Sequence[str | list], *, max_new_tokens: int, temperature: float, seed: int,
                top_p: float = 1.0, cache: Path | None = None, label: str = "") -> list[Reply]: ...


def folder_fingerprint(folder: str | Path) -> str:
    """The folder's absolute path with the size and modification time of its weight and config files: a model
    retrained into the same folder gets new cache keys, so its stale replies are never reused."""
    path = Path(folder).resolve()
    stamps = sorted(f"{f.name}:{f.stat().st_size}:{f.stat().st_mtime_ns}" for f in path.iterdir()
                    if f.suffix in (".safetensors", ".json") and f.is_file()) if path.is_dir() else []
    return f"{path}|{'|'.join(stamps)}"


class LocalResponder:
    """Replies of a model folder through its chat format (tether.chat), sampled in batches with the KV cache."""

    def __init__(self, model_dir: str, chat_template: str = "", max_prompt_length: int | None = None,
                 batch_size: int = 16, device: str = "auto", fit: bool = False):
        """`fit`: with no max_prompt_length, cut prompts (keeping their end) to what the model's positions leave
        after max_new_tokens, instead of failing on a prompt too long for it (a judge's long instructions)."""
        self.model_dir, self.chat_template, self.max_prompt_length = str(model_dir), chat_template, max_prompt_length
        self.batch_size, self.device, self.fit = batch_size, device, fit
        # what the cache key's "model" names: the folder as it is now, and how prompts are formatted and cut
        self.key_model = (f"local:{folder_fingerprint(model_dir)}|template={chat_template}|"
                          f"max_prompt_length={max_prompt_length}|fit={fit}")
        self._model = self._fmt = None

    def _load(self) -> None:
        import torch

        from tether.chat import chat_format
        from tether.models import load_policy, load_tokenizer

        device = self.device if self.device != "auto" else "cuda" if torch.cuda.is_available() else "cpu"
        self._model = load_policy(self.model_dir).to(device).eval()
        self._fmt = chat_format(load_tokenizer(self.model_dir), self.chat_template, self.model_dir)

    def has_chat_template(self) -> bool:
        """Whether the model can be given conversations: its chat format has a template (the tokenizer only is read,
        so a caller can ask before any sampling)."""
        from tether.chat import chat_format
        from tether.models import load_tokenizer

        return chat_format(load_tokenizer(self.model_dir), self.chat_template, self.model_dir).template is not None

    def replies(self, prompts: Sequence[str | list], *, max_new_tokens: int, temperature: float, seed: int,
                top_p: float = 1.0, cache: Path | None = None, label: str = "") -> list[Reply]:
        """One reply per prompt, in order; replies in `cache` are reused, new ones appended to it batch by batch."""
        bodies = [request_body(self.key_model, p, max_new_tokens, temperature, top_p, seed, k)
                  for p, k in zip(prompts, sample_indices(prompts))]
        keys = [request_key(b) for b in bodies]
        store = ReplyCache(cache)
        todo = [i for i, key in enumerate(keys) if key not in store]
        if todo:
            self._generate([prompts[i] for i in todo], [bodies[i]["seed"] for i in todo], [keys[i] for i in todo],
                           store, max_new_tokens, temperature, top_p, label or os.path.basename(self.model_dir))
        return [store[key] for key in keys]

    def _generate(self, prompts: list, seeds: list[int], keys: list[str], store: ReplyCache, max_new_tokens: int,
                  temperature: float, top_p: float, label: str) -> None:
        from tether.generation import cut_at_stop
        from tether.models import check_positions, position_limit
        from tether.rollout import row_noise, sample, sample_seed
        from tether.serve.jobs import SEED_MODULUS

        if self._model is None:
            self._load()
        model, fmt = self._model, self._fmt
        limit, positions = self.max_prompt_length, position_limit(model)
        if limit is None and self.fit and positions is not None:
            limit = max(1, positions[0] - max_new_tokens)
        encoded = fmt.prompts_ids(list(prompts), limit)
        check_positions(model, max_new_tokens, "max_new_tokens", prompt=max(map(len, encoded)))
        order = sorted(range(len(prompts)), key=lambda i: len(encoded[i]))  # similar lengths share a batch
        with progress_bar(label, total=len(prompts)) as bar:
            for start in range(0, len(order), self.batch_size):
                idx = order[start:start + self.batch_size]
                noise = row_noise([sample_seed(seeds[i], 0, 0) % SEED_MODULUS for i in idx], max_new_tokens,
                                  model.device)  # the noise tether serve gives choice 0 of the same request
                out = sample(model, [encoded[i] for i in idx], max_new_tokens=max_new_tokens, temperature=temperature,
                             top_p=top_p, eos_token_id=list(fmt.stop_ids), pad_token_id=fmt.pad_id, noise=noise)
                for b, i in enumerate(idx):
                    kept, tokens, ended = cut_at_stop(out.response_ids[b].tolist(), fmt.stop_ids)
                    text = fmt.tokenizer.decode(kept, skip_special_tokens=True).strip()
                    store.add(keys[i], Reply(text, tokens, ended))  # appended now: a kill loses this batch at most
                bar.update(len(idx))
