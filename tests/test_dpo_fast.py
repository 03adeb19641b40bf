"""tether dpo's exact shortcuts (`tether.logprobs`: response-only LM head, shared prompts) on HH-RLHF rows, whose
long dialogues are the shared prompts: one optimizer step of DPO, IPO and KTO gives the plain path's loss, metrics
and gradients, and the reference log-probs agree; on llama, qwen2 and gpt2 (tests/archkit.py)."""
from __future__ import annotations

import json

import pytest
import torch

import archkit
from tether import logprobs
from tether.chat import chat_format
from tether.data.formats import load_comparisons, load_unpaired
from tether.optim import adamw
from tether.stages.dpo import DPOConfig, pairs, unpaired

TOL = 1e-5
PLAIN = dict(response_only_head=False, share_prompts=False)


@pytest.fixture(scope="module")
def hh_data(tmp_path_factory) -> tuple[str, str]:
    """12 HH-RLHF rows as hh comparisons, and as KTO rows (each chosen desirable, each rejected not)."""
    folder = tmp_path_factory.mktemp("hh_fast")
    rows = archkit.hh_rows(12)
    (folder / "hh.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    comparisons = load_comparisons(folder / "hh.jsonl", "hh", labelled=True)
    kto = [{"prompt": c.prompt, "completion": [{"role": "assistant", "content": text}], "label": good}
           for c in comparisons for text, good in ((c.chosen, True), (c.rejected, False))]
    (folder / "kto.jsonl").write_text("".join(json.dumps(r) + "\n" for r in kto))
    return str(folder / "hh.jsonl"), str(folder / "kto.jsonl")


def step(variant, model_dir, items, cfg: DPOConfig, pad_id: int) -> tuple[dict, list[torch.Tensor]]:
    model = archkit_model(model_dir)
    optimizer = adamw(model, 1e-3, 0.01, (0.9, 0.99))
    grads: list = []
    optimizer.register_step_pre_hook(lambda *_: grads.extend(p.grad.clone() for p in model.parameters()))
    return variant.train_step(model, optimizer, items, cfg, pad_id, 1e-3), grads


def archkit_model(model_dir):
    from tether.models import load_policy

    return load_policy(str(model_dir)).eval()


def loaded(variant, data: str, fmt, **kw):
    cfg = DPOConfig(data=data, max_length=256, eval_fraction=0.0, batch_size=8, micro_batch_size=4, grad_clip=0.0,
                    format="hh" if variant is pairs else "auto", **kw)
    cfg.validate()
    return cfg, variant.load(cfg, fmt, *variant.read(cfg))[1]


@pytest.mark.parametrize("arch", ["llama", "qwen2", "gpt2"])
@pytest.mark.parametrize("loss", ["sigmoid", "ipo", "kto"])
def test_fast_step_equals_the_plain_step(arch, loss, hh_data, real_root, tmp_path, monkeypatch):
    check_fast_step(arch, loss, hh_data, real_root, tmp_path, monkeypatch, "tree_prompt_logps")


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
@pytest.mark.parametrize("loss", ["sigmoid", "kto"])
def test_fast_step_with_cached_prompts_equals_the_plain_step(arch, loss, hh_data, real_root, tmp_path, monkeypatch):
    """The responses after the prompts' cached keys and values: the form attention without custom masks takes."""
    monkeypatch.setattr(logprobs, "tree_shares", lambda model: False)
    check_fast_step(arch, loss, hh_data, real_root, tmp_path, monkeypatch, "shared_prompt_logps")


def check_fast_step(arch, loss, hh_data, real_root, tmp_path, monkeypatch, shared_pass: str):
    """A step through the fast paths (`shared_pass` the shared-prompt one) equals the plain step: the outputs within
    TOL (wider where sums grow), the gradients within TOL."""
    model_dir = archkit.save_model(arch, "chatml", real_root)
    fmt = chat_format(archkit.tokenizer("chatml", real_root))
    variant = unpaired if loss == "kto" else pairs
    cfg, items = loaded(variant, hh_data[loss == "kto"], fmt, loss=loss)
    items = items[:8]
    # a reference away from the policy (the cached pass, shifted), so the losses are not at their h = 0 values
    variant.reference_logps(archkit_model(model_dir), items, fmt.pad_id, 4, tmp_path / "ref.safetensors")
    for i, x in enumerate(items):
        if loss == "kto":
            x.ref_logp, x.ref_kl_logp = x.ref_logp - 3 + i, x.ref_kl_logp - 5
        else:
            x.ref_chosen, x.ref_rejected = x.ref_chosen - 2 - i, x.ref_rejected + 1
    shared = []
    original = getattr(logprobs, shared_pass)
    monkeypatch.setattr(logprobs, shared_pass, lambda *a, **k: shared.append(1) or original(*a, **k))
    fast_out, fast_grads = step(variant, model_dir, items, cfg, fmt.pad_id)
    assert shared  # the HH prompts are long: the shared-prompt pass ran
    plain_cfg, _ = loaded(variant, hh_data[loss == "kto"], fmt, loss=loss, **PLAIN)
    plain_out, plain_grads = step(variant, model_dir, items, plain_cfg, fmt.pad_id)
    assert fast_out.keys() == plain_out.keys()
    for key, value in plain_out.items():
        # summed log-probs of whole HH responses reach hundreds, where one float32 step is 3e-5-6e-5 (the rewards,
        # β(log π - log π_ref), keep a few such steps), and the grad norm adds ~1e5 squared gradients, each within
        # 2e-6: wider tolerances there; the loss (and the gradients below) within TOL
        rel = 1e-6 if "logps" in key else 1e-5 if key == "grad_norm" else 0
        tol = 1e-4 if key.startswith("rewards/") or key == "kl" else TOL
        assert fast_out[key] == pytest.approx(value, abs=tol, rel=rel), key
    for g, ref in zip(fast_grads, plain_grads, strict=True):
        torch.testing.assert_close(g, ref, atol=TOL, rtol=TOL)


def test_fast_reference_equals_the_plain_reference(hh_data, real_root, tmp_path):
    model_dir = archkit.save_model("llama", "chatml", real_root)
    fmt = chat_format(archkit.tokenizer("chatml", real_root))
    _, items = loaded(pairs, hh_data[0], fmt)
    model = archkit_model(model_dir)
    pairs.reference_logps(model, items, fmt.pad_id, 4, tmp_path / "fast.safetensors")
    fast = [x for p in items for x in (p.ref_chosen, p.ref_rejected)]
    pairs.reference_logps(model, items, fmt.pad_id, 4, tmp_path / "plain.safetensors", logprobs.PLAIN)
    plain = [x for p in items for x in (p.ref_chosen, p.ref_rejected)]
    assert fast == pytest.approx(plain, abs=TOL, rel=1e-6)  # sums of hundreds: float32 steps of 3e-5 there
    assert len({round(c, 3) for c in plain}) == len(plain)  # distinct values: a swap would show


def test_the_settings_switch_the_shortcuts_off():
    from tether.stages.dpo.sequences import fast_paths

    assert fast_paths(DPOConfig()) == logprobs.FastPaths(True, True)
    assert fast_paths(DPOConfig(**PLAIN)) == logprobs.PLAIN
