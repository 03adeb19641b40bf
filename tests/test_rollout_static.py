"""tether.rollout's fixed-shape static-cache decoding and its compiled step, against today's dynamic-cache path.

Real architectures from tests/archkit.py (tiny, random init), prompts of different lengths (left padding), stop
tokens picked from a first rollout so that rows end at different steps, and prompt + new tokens past the 64-token
sliding window of gemma2/gemma3/mistral. torch.compile runs with backend="eager" here: dynamo captures the same
graph that Inductor would turn into CUDA graphs on a GPU, without a minute of C++ compiling per model.
"""
import copy

import pytest
import torch
from torch._dynamo.utils import counters

import archkit
from tether import rollout as rollout_module
from tether.distributed import autocast_forward, checkpoint_layers
from tether.lora import LoraOptions, apply_lora
from tether.rollout import Rollout, cache_length, decode_call, row_noise, sample

LENGTHS = (3, 9, 17, 6)  # prompt lengths: left padding up to 14 tokens
NEW = 56  # 17 + 56 = 73 > the 64-token sliding window of gemma2, gemma3, mistral
FIELDS = ("prompt_ids", "prompt_mask", "response_ids", "response_mask", "has_eos", "lengths")


@pytest.fixture(scope="module")
def tok():
    return archkit.build_tokenizer("chatml")


@pytest.fixture(scope="module")
def prompts() -> list[list[int]]:
    g = torch.Generator().manual_seed(0)
    return [torch.randint(5, 500, (n,), generator=g).tolist() for n in LENGTHS]


@pytest.fixture
def eager_compile(monkeypatch):
    """torch.compile with the eager backend (dynamo's capture, no Inductor), fullgraph as on a GPU; fresh caches."""
    monkeypatch.setattr(rollout_module, "COMPILE_OPTIONS", {"backend": "eager", "fullgraph": True})
    torch._dynamo.reset()
    counters.clear()
    yield
    torch._dynamo.reset()


def stops_for(model, prompts, tok, temperature) -> list[int]:
    """Two stop tokens that end rows 0 and 2 early (the tokens a first rollout drew there), so that rows finish at
    different steps (pads after a row's stop token; the dynamic cache drops the row)."""
    probe = sample(model, prompts, max_new_tokens=NEW, temperature=temperature, eos_token_id=-1,
                   pad_token_id=tok.pad_token_id, generator=torch.Generator().manual_seed(1))
    return [int(probe.response_ids[0, 5]), int(probe.response_ids[2, 20])]


def run(model, prompts, tok, temperature, stops, **kw) -> Rollout:
    return sample(model, prompts, max_new_tokens=NEW, temperature=temperature, eos_token_id=stops,
                  pad_token_id=tok.pad_token_id, generator=torch.Generator().manual_seed(1), **kw)


def assert_same(a: Rollout, b: Rollout) -> None:
    for name in FIELDS:
        assert torch.equal(getattr(a, name), getattr(b, name)), name
    torch.testing.assert_close(a.logprobs, b.logprobs, atol=1e-5, rtol=0)


@pytest.mark.parametrize("arch", list(archkit.ARCHITECTURES))
@pytest.mark.parametrize("temperature", [0.0, 1.0])
def test_static_fixed_shape_steps_give_the_dynamic_tokens(arch, temperature, tok, prompts):
    model = archkit.build_model(arch, tok).eval()
    stops = stops_for(model, prompts, tok, temperature)
    rows = []  # the rows of each forward: the dynamic cache drops finished ones, the static keeps all four
    hook = model.register_forward_pre_hook(lambda _, args, kw: rows.append(kw["input_ids"].size(0)), with_kwargs=True)
    dynamic = run(model, prompts, tok, temperature, stops)
    dynamic_rows, rows[:] = rows[:], []
    static = run(model, prompts, tok, temperature, stops, cache="static")
    hook.remove()
    assert_same(dynamic, static)
    assert set(rows) == {4} and dynamic_rows[0] == 4 and dynamic_rows[-1] <= 2  # rows 0 and 2 (at least) left
    # Rows 0 and 2 ended early and the rollout outlived them (the pads-after-EOS path ran), past the sliding window:
    # the longest prompt + the steps run > 64.
    R = dynamic.response_ids.size(1)
    assert dynamic.lengths[0] <= 6 and dynamic.lengths[2] <= 21 and dynamic.has_eos[0] and dynamic.has_eos[2]
    assert dynamic.lengths.max() > 21 and max(LENGTHS) + R > 64


@pytest.mark.parametrize("arch", ["gpt2", "gemma2"])
def test_dropped_rows_with_a_base_tokenizer_whose_pad_is_eos(arch, prompts):
    # No pad token: the chat format pads with eos, so the pads after a row's end are stop tokens too.
    from tether.chat import chat_format

    base = archkit.build_tokenizer("base")
    assert base.pad_token_id is None
    pad = chat_format(base).pad_id
    assert pad == base.eos_token_id
    model = archkit.build_model(arch, base).eval()
    probe = sample(model, prompts, max_new_tokens=NEW, temperature=1.0, eos_token_id=-1, pad_token_id=pad,
                   generator=torch.Generator().manual_seed(1))
    stops = [pad, int(probe.response_ids[0, 5]), int(probe.response_ids[2, 20])]
    dynamic, static = (sample(model, prompts, max_new_tokens=NEW, temperature=1.0, eos_token_id=stops,
                              pad_token_id=pad, generator=torch.Generator().manual_seed(1), cache=cache)
                       for cache in ("dynamic", "static"))
    assert_same(dynamic, static)
    assert dynamic.lengths[0] <= 6 and dynamic.lengths[2] <= 21 and dynamic.lengths.max() > 21


def test_static_with_row_noise_as_online_rl_samples(tok, prompts):
    model = archkit.build_model("qwen2", tok).eval()
    noise = row_noise([11, 12, 13, 14], NEW)
    kw = dict(max_new_tokens=NEW, temperature=0.7, eos_token_id=[7], pad_token_id=tok.pad_token_id, noise=noise)
    assert_same(sample(model, prompts, **kw), sample(model, prompts, cache="static", **kw))


@pytest.mark.parametrize("arch", ["llama", "gpt2", "qwen2", "gemma2"])
def test_compiled_step_is_one_graph_and_gives_the_dynamic_tokens(arch, tok, prompts, eager_compile):
    model = archkit.build_model(arch, tok).eval()
    stops = stops_for(model, prompts, tok, 1.0)
    dynamic = run(model, prompts, tok, 1.0, stops)
    compiled = run(model, prompts, tok, 1.0, stops, cache="static", compile=True)
    assert_same(dynamic, compiled)
    # fullgraph=True: no graph break, or it would have raised. Full attention: one graph for every decoding step
    # (fixed shapes). gemma2's sliding layers count their length in a Python int (transformers' static sliding
    # layer), so dynamo retraces while its window fills: one graph per state, not per step.
    graphs = counters["stats"]["unique_graphs"]
    assert graphs == 1 if arch != "gemma2" else 1 < graphs <= 3
    # A later call with shorter prompts reuses the cache length, so the same graph: no recompilation; and the same
    # cache, emptied (stale keys from the first call would change the tokens).
    kv = model._tether_static_cache[2]
    short = [p[:4] for p in prompts]
    again = run(model, short, tok, 1.0, stops, cache="static", compile=True)
    assert counters["stats"]["unique_graphs"] == graphs and model._tether_static_cache[2] is kv
    assert again.prompt_ids.shape == (4, 4)
    assert_same(run(model, short, tok, 1.0, stops), again)


def test_cache_length_keeps_the_longest_when_compiling(tok):
    model = archkit.build_model("llama", tok)
    assert cache_length(model, 30, compile=False) == 30
    assert [cache_length(model, n, compile=True) for n in (30, 20, 45, 40)] == [30, 30, 45, 45]
    assert cache_length(model, 20, compile=False) == 20  # uncompiled calls stay exact


def test_compiled_call_is_made_once_per_model_and_not_shared_by_a_deepcopy(tok, eager_compile):
    model = archkit.build_model("llama", tok).eval()
    assert decode_call(model, compile=False) is model
    call = decode_call(model, compile=True)
    assert decode_call(model, compile=True) is call
    twin = copy.deepcopy(model)  # the frozen reference is made this way: it must not run the original's weights
    assert decode_call(twin, compile=True) is not call


@pytest.mark.parametrize("wrap", ["lora", "autocast", "lora+autocast+checkpointing"])
def test_compiled_step_captures_lora_autocast_and_checkpointing_wrappers(wrap, tok, prompts, eager_compile):
    model = archkit.build_model("qwen2", tok)
    if "lora" in wrap:
        model = apply_lora(model, LoraOptions(r=4))
    if "checkpointing" in wrap:
        checkpoint_layers(model)
    if "autocast" in wrap:
        autocast_forward(model)  # its hooks cannot be traced: the compiled step enters autocast itself
    model.eval()
    with pytest.warns(UserWarning) if "autocast" in wrap else _nothing():  # autocast("cuda") on a CPU machine
        dynamic = run(model, prompts, tok, 1.0, [7])
        compiled = run(model, prompts, tok, 1.0, [7], cache="static", compile=True)
    assert_same(dynamic, compiled)


class _nothing:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def test_compile_needs_the_static_cache(tok, prompts):
    model = archkit.build_model("llama", tok).eval()
    with pytest.raises(ValueError, match="^compile: needs cache='static'"):
        sample(model, prompts, max_new_tokens=4, eos_token_id=7, pad_token_id=tok.pad_token_id, compile=True)


# ---------------------------------------------------------------------------------------------
# Online RL: rollout_cache


def test_online_rollout_cache_static_and_compiled_train_as_dynamic(tmp_path, world_dir, model_dir, eager_compile):
    """GRPO, two steps: the static and the compiled rollouts sample the same responses (seeded row noise), so the
    steps log the same scores, lengths and EOS rates and train to the same weights (log-probs equal within 1e-6)."""
    import json

    from safetensors.torch import load_file

    from tether.stages.ppo import GRPOConfig, run as run_stage

    def train(cache: str) -> tuple[list, dict]:
        out = tmp_path / cache
        run_stage(GRPOConfig(model=str(model_dir), prompts=str(world_dir / "prompts.jsonl"), reward="gold",
                             world=str(world_dir), max_new_tokens=8, rollout_batch=2, group_size=4, minibatch_size=4,
                             micro_batch_size=2, max_steps=2, lr=3e-3, eval_every=0, eval_prompts=0, save_every=0,
                             rollout_cache=cache, out=str(out)))
        rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
        logged = [(r["score"], r["response_length"], r["eos_rate"]) for r in rows if r["step"] > 0]
        return logged, load_file(str(out / "model" / "model.safetensors"))

    dynamic_rows, dynamic_weights = train("dynamic")
    for cache in ("static", "compiled"):
        rows, weights = train(cache)
        assert rows == dynamic_rows, cache
        assert (counters["stats"]["unique_graphs"] > 0) == (cache == "compiled")  # the compiled step did run
        for name, w in weights.items():
            torch.testing.assert_close(w, dynamic_weights[name], atol=1e-5, rtol=0, msg=f"{cache}: {name}")


def test_online_rollout_cache_is_checked():
    from tether.config import load_config
    from tether.errors import ConfigError
    from tether.stages.online.config import ROLLOUT_CACHES
    from tether.stages.ppo import GRPOConfig

    assert ROLLOUT_CACHES == {"dynamic": ("dynamic", False), "static": ("static", False), "compiled": ("static", True)}
    with pytest.raises(ConfigError, match="^GRPOConfig.rollout_cache: must be one of 'dynamic', 'static', 'compiled'"):
        load_config(GRPOConfig, overrides=["rollout_cache=paged"])
