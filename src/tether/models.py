"""Build, save and load the Hugging Face causal LMs tether trains.

Everything on disk is a plain `transformers` folder with safetensors weights: `AutoModelForCausalLM` and
`AutoTokenizer` load it with no tether code. Loading refuses pickle checkpoints (`*.bin`), which can run
arbitrary code when unpickled.
"""
from __future__ import annotations

import inspect
import json
import os
from collections.abc import Sequence
from pathlib import Path

import torch
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    LlamaConfig,
    LlamaForCausalLM,
    PretrainedConfig,
    PreTrainedModel,
)

from tether.errors import ConfigError, TetherError
from tether.guard import check_finite
from tether.lora import ADAPTER_FOLDER, has_adapters, merged_copy, save_adapter
from tether.progress import quiet_transformers

# LlamaConfig kwargs. Parameter counts are for a 2048-token vocabulary with tied embeddings.
PRESETS: dict[str, dict] = {
    # ~86k parameters: for unit and smoke tests.
    "test": dict(
        hidden_size=32, num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=2,
        intermediate_size=64, max_position_embeddings=256, tie_word_embeddings=True,
    ),
    # ~1.6M parameters: the default tiny assistant world, trainable on a laptop CPU in minutes.
    "demo": dict(
        hidden_size=160, num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=4,
        intermediate_size=448, max_position_embeddings=256, tie_word_embeddings=True,
    ),
    # ~4.7M parameters.
    "small": dict(
        hidden_size=256, num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=4,
        intermediate_size=1024, max_position_embeddings=512, tie_word_embeddings=True,
    ),
}


def build_model(preset: str, tokenizer, seed: int = 0) -> LlamaForCausalLM:
    """A freshly initialised fp32 Llama sized by `PRESETS[preset]`, its vocabulary taken from `tokenizer`.

    The init runs under a forked RNG, so the same seed gives the same weights and the caller's RNG stream
    is left untouched.
    """
    if preset not in PRESETS:
        raise ConfigError(f"model.preset: unknown preset {preset!r}; allowed: {', '.join(PRESETS)}")
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        **PRESETS[preset],
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = LlamaForCausalLM(config)
    return model.to(torch.float32)


def _check_local_folder(path: str, what: str) -> None:
    """Raise TetherError unless `path` holds safetensors weights (`what` names the folder's role)."""
    if not os.path.isdir(path):
        raise TetherError(f"{what}: folder not found: {path}")
    files = os.listdir(path)
    if not any(f.endswith(".safetensors") or f.endswith(".safetensors.index.json") for f in files):
        pickles = [f for f in files if f.endswith((".bin", ".pt", ".pth", ".ckpt"))]
        hint = f" (found {', '.join(sorted(pickles))}; pickle checkpoints are refused)" if pickles else ""
        raise TetherError(f"{what}: no safetensors weights in {path}{hint}")


def _refuse_reward_model(path: str) -> None:
    """A reward model's folder (`tether rm`'s, or any sequence classifier) given where a policy is meant: loaded as a
    causal LM it would get a fresh random LM head and generate noise, with only transformers' load report to say so."""
    config = Path(path) / "config.json"
    architectures = (json.loads(config.read_text()).get("architectures") or []) if config.is_file() else []
    if (Path(path) / "reward_config.json").is_file() or (
            architectures and all(a.endswith("ForSequenceClassification") for a in architectures)):
        what = ", ".join(architectures) or "reward_config.json"
        raise ConfigError(f"model: {path} is a reward model ({what}), not a policy that generates text; give a causal "
                          "LM folder (e.g. runs/sft/model), or pass this one as reward_model=")


def _looks_like_hub_id(name: str) -> bool:
    """True for "name" or "org/name" not written as a path; "runs/sft" is a path when ./runs exists.

    Names under `runs/` (tether's own run folders) are always paths: a missing run folder must fail
    at once, not after the hub client's offline retries.
    """
    if name.startswith((".", "/", "~", "runs/")) or name.count("/") > 1 or os.sep != "/":
        return False
    return "/" not in name or not os.path.isdir(name.split("/")[0])


def load_policy(path_or_name: str, trust_remote_code: bool = False) -> PreTrainedModel:
    """Load a causal LM from a local folder or a Hugging Face hub id, safetensors weights only.

    `trust_remote_code` stays False unless the user asks: it runs Python shipped with the checkpoint.
    """
    quiet_transformers()
    path_or_name = str(path_or_name)
    # Check local folders ourselves: a clearer message than HF's, and a mistyped path never reaches the hub.
    if os.path.exists(path_or_name) or not _looks_like_hub_id(path_or_name):
        _check_local_folder(path_or_name, "model")
        _refuse_reward_model(path_or_name)
    try:
        return AutoModelForCausalLM.from_pretrained(
            path_or_name, use_safetensors=True, trust_remote_code=trust_remote_code
        )
    except OSError as e:  # raised for missing repos, missing files and offline misses alike
        raise TetherError(f"model: cannot load {path_or_name}: {e}") from None


def load_tokenizer(path: str, trust_remote_code: bool = False):
    """Load the tokenizer saved beside a model (`AutoTokenizer`), with a clear error when it is missing."""
    path = str(path)
    if os.path.exists(path) or not _looks_like_hub_id(path):
        if not os.path.isdir(path):
            raise TetherError(f"tokenizer: folder not found: {path}")
        if not any(f in os.listdir(path) for f in ("tokenizer.json", "tokenizer_config.json")):
            raise TetherError(f"tokenizer: no tokenizer.json or tokenizer_config.json in {path}")
    try:
        return AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as e:  # ValueError: folder exists but holds no tokenizer files
        raise TetherError(f"tokenizer: cannot load {path}: {e}") from None


def save_pretrained(model: PreTrainedModel, tokenizer, path: str) -> None:
    """Write model (safetensors) and tokenizer to `path`, loadable by plain `transformers`. NaN or inf weights
    are refused before anything is written (NonFiniteError). A LoRA model (tether.lora) is written merged, its
    adapter alone in `path/adapter/`."""
    adapted = model if has_adapters(model) else None
    if adapted is not None:
        model = merged_copy(adapted)
    check_finite(model.state_dict(), path)
    os.makedirs(path, exist_ok=True)
    # transformers 5 always writes safetensors and dropped the flag; 4.x needs it spelled out.
    kwargs = {}
    if "safe_serialization" in inspect.signature(model.save_pretrained).parameters:
        kwargs["safe_serialization"] = True
    model.save_pretrained(path, **kwargs)
    tokenizer.save_pretrained(path)
    if adapted is not None:  # a subfolder: an adapter_config.json beside config.json would make HF load the adapter
        save_adapter(adapted, os.path.join(path, ADAPTER_FOLDER))


def accepts(model, kwarg: str) -> bool:
    """Whether `model`'s forward takes `kwarg`, looking through DDP and peft wrappers."""
    model = getattr(model, "module", model)  # DDP
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return kwarg in inspect.signature(base.forward).parameters


def cache_kwarg(model) -> str:
    """The forward kwarg that takes a key/value cache: transformers renamed `past_key_values` to `cache` during 5.x
    (the old name warns until 5.40)."""
    return "past_key_values" if accepts(model, "past_key_values") and not accepts(model, "cache") else "cache"


def output_cache(output):
    """The key/value cache a forward returned (`cache`, formerly `past_key_values`)."""
    return output.cache if getattr(output, "cache", None) is not None else output.past_key_values


def is_checkpointing(model) -> bool:
    """Whether activation (gradient) checkpointing is on: transformers' own (under its 5.x name when the model has
    it) or tether's (`distributed.checkpoint_layers`, which replaces a decoder layer's `forward`; not
    `distributed.compile_layers`, which does too and marks the layer `_tether_compiled`)."""
    from transformers.modeling_layers import GradientCheckpointingLayer

    name = "is_activation_checkpointing" if hasattr(type(model), "is_activation_checkpointing") \
        else "is_gradient_checkpointing"
    return bool(getattr(model, name, False)) or any(
        isinstance(m, GradientCheckpointingLayer) and "forward" in vars(m) and not vars(m).get("_tether_compiled")
        for m in model.modules())


# Model types whose learned positions start after the padding index (fairseq's RoBERTa layout): position ids run
# from pad_token_id + 1, so a RoBERTa with max_position_embeddings=514 and pad 1 holds 512 tokens.
_POSITIONS_AFTER_PADDING = frozenset({
    "roberta", "xlm-roberta", "xlm-roberta-xl", "camembert", "data2vec-text", "longformer", "ibert", "mpnet",
    "roberta-prelayernorm", "xmod", "luke", "lilt", "markuplm"})
# Names of the position limit: transformers' own (configs map it to theirs, GPT-2's n_positions, through
# `attribute_map`), then those of configs that do not map it (MPT's max_seq_len).
_POSITION_FIELDS = ("max_position_embeddings", "n_positions", "max_seq_len")


def _config_of(model_or_config):
    """The transformers config of a model, a peft model, a reward or value model (their `backbone`), or a config
    itself; None for a module that has none (a value head reading the policy's hidden states)."""
    if isinstance(model_or_config, PretrainedConfig):
        config = model_or_config
    else:
        config = getattr(model_or_config, "config", None) or getattr(getattr(model_or_config, "backbone", None),
                                                                    "config", None)
    return config.get_text_config() if isinstance(config, PretrainedConfig) else None


def position_limit(model_or_config) -> tuple[int, str] | None:
    """(the most tokens one sequence may hold, the config attribute that sets it), or None when the config names
    no limit (ALiBi models such as BLOOM, a module without a config).

    Learned position tables (GPT-2, OPT, BERT) raise IndexError past it; rotary models (Llama) run on silently,
    at positions they never trained on."""
    config = _config_of(model_or_config)
    if config is None:
        return None
    for name in _POSITION_FIELDS:
        limit = getattr(config, name, None)
        if isinstance(limit, int) and not isinstance(limit, bool):
            if config.model_type in _POSITIONS_AFTER_PADDING:
                limit -= (config.pad_token_id or 0) + 1
            return limit, config.attribute_map.get(name, name)
    return None


def check_positions(model_or_config, length: int, field: str, prompt: int = 0) -> None:
    """Raise ConfigError unless `prompt` + `length` tokens fit in the model's positions (`position_limit`).

    `length` is the setting named `field` (max_length, max_new_tokens); `prompt`, when given, the longest prompt
    the `length` new tokens follow. The message names the setting, the model and the largest value that fits."""
    found = position_limit(model_or_config)
    if found is None or prompt + length <= found[0]:
        return
    limit, name = found
    path = _config_of(model_or_config).name_or_path
    where = f"the {limit} positions of model {path} ({name})" if path else f"the {limit} positions of the model ({name})"
    if not prompt:
        raise ConfigError(f"{field}: {length} is more than {where}; use {field}<={limit}")
    shorter = f"max_prompt_length<={limit - length}" if limit > length else "shorter prompts"
    fix = f"use {field}<={limit - prompt} or {shorter}" if limit > prompt else f"use {shorter}"
    raise ConfigError(f"{field}: {length} after the longest prompt ({prompt} tokens) is more than {where}; {fix}")


def check_sampling_positions(models, prompts: Sequence[Sequence[int]], max_new_tokens: int) -> None:
    """`check_positions` of the longest of `prompts` (token ids) + max_new_tokens on each model that reads the
    sampled sequences: the policy, a value model (the policy's tokens), a reward model. None entries are skipped,
    and so is a model that cuts what it reads to its own `max_length` (a reward model; `tether rm` checked it).
    A reward model with no max_length re-encodes the text with its own tokenizer: the policy's count is the
    estimate."""
    longest = max(map(len, prompts), default=0)
    for model in models:
        if model is not None and getattr(model, "max_length", None) is None:
            check_positions(model, max_new_tokens, "max_new_tokens", prompt=longest)


def count_parameters(model: torch.nn.Module) -> int:
    """Number of distinct parameters (a tied embedding/lm_head matrix counts once)."""
    return sum(p.numel() for p in model.parameters())


def model_flops_per_token(model: PreTrainedModel, seq_len: int) -> float:
    """Training FLOPs per token (forward + backward), PaLM appendix B (Chowdhery et al. 2022):

        flops = 6 * N + 12 * L * H * T

    N: parameters that take part in matmuls (an untied input embedding is a lookup, so it is left out; a
    tied one is counted once, as the lm_head), L: layers, H: attention width (heads * head_dim, the hidden
    size for every preset), T: `seq_len`. 6N covers the weight matmuls (2 forward + 4 backward per
    parameter); 12LHT covers the QK^T and attention-times-V products, which grow with context length.
    """
    cfg = model.config
    n = count_parameters(model)
    embed = model.get_input_embeddings().weight
    if embed is not model.get_output_embeddings().weight:
        n -= embed.numel()
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
    return float(6 * n + 12 * cfg.num_hidden_layers * cfg.num_attention_heads * head_dim * seq_len)
