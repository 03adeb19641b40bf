"""tether.rollout: parity with HF `generate` and with a plain forward pass, EOS handling, truncation, seeding.

Models are untrained ("test" preset, and "demo" size where noted) on the conftest tokenizer; prompts of
different lengths so that left padding is exercised.
"""
import math

import pytest
import torch

from tether.generation import left_pad
from tether.rollout import Rollout, _draw, filter_logits, logprobs_of, row_noise, sample
from tether.chat import chat_format

USER_MESSAGES = ["Hi", "What is the capital of the first country?", "Name a currency.",
                 "Tell me, at some length, about the language spoken in the largest country you know of."]


@pytest.fixture(scope="module")
def prompts(tokenizer) -> list[list[int]]:
    rows = [chat_format(tokenizer).prompt_ids([{"role": "user", "content": m}]) for m in USER_MESSAGES]
    assert len({len(r) for r in rows}) == len(rows), "prompt lengths must differ to exercise left padding"
    return rows


@pytest.fixture(scope="module")
def ids(tokenizer) -> dict:
    return {"eos_token_id": tokenizer.eos_token_id, "pad_token_id": tokenizer.pad_token_id}


@pytest.fixture(scope="module")
def models(tokenizer) -> dict:
    from tether.models import build_model

    return {preset: build_model(preset, tokenizer, seed=1).eval() for preset in ("test", "demo")}


def check_invariants(r: Rollout, pad_id: int, eos_id: int) -> None:
    """Shapes and the mask/ids/log-probs/has_eos/lengths relations every rollout must satisfy."""
    B, R = r.response_ids.shape
    assert r.prompt_ids.shape == r.prompt_mask.shape and r.prompt_ids.size(0) == B
    assert r.response_mask.shape == r.logprobs.shape == (B, R)
    assert not r.response_ids.is_inference() and r.response_ids.is_contiguous()  # usable under autograd
    assert torch.equal(r.lengths, r.response_mask.sum(1))
    assert torch.equal(r.has_eos, (r.response_ids == eos_id).any(1) & (r.response_mask.bool()).any(1))
    off = r.response_mask == 0
    assert (r.response_ids[off] == pad_id).all() and (r.logprobs[off] == 0).all()
    assert (r.logprobs[~off] <= 0).all() and torch.isfinite(r.logprobs).all()
    # The mask is a prefix of ones: nothing is generated after a row's EOS.
    assert (r.response_mask[:, 1:] <= r.response_mask[:, :-1]).all()


# ---------------------------------------------------------------------------------------------
# (1) greedy parity with generate


@pytest.mark.parametrize("preset", ["test", "demo"])
@pytest.mark.parametrize("cache", ["dynamic", "static"])
def test_greedy_equals_generate(models, prompts, ids, preset, cache):
    model = models[preset]
    prompt_ids, mask = left_pad(prompts, ids["pad_token_id"])
    with torch.no_grad():
        full = model.generate(input_ids=prompt_ids, attention_mask=mask, max_new_tokens=20, do_sample=False, **ids)
    r = sample(model, prompts, max_new_tokens=20, temperature=0.0, cache=cache, **ids)
    assert torch.equal(r.prompt_ids, prompt_ids) and torch.equal(r.prompt_mask, mask)
    assert torch.equal(r.response_ids, full[:, prompt_ids.size(1):])
    check_invariants(r, ids["pad_token_id"], ids["eos_token_id"])


# ---------------------------------------------------------------------------------------------
# (2) sampled log-probs equal a plain forward pass


def reference_logprobs(model, prompt: list[int], response: list[int], temperature: float) -> list[float]:
    """Slow reference: one unpadded row, log_softmax(logits / temperature) at each response token."""
    x = torch.tensor([prompt + response])
    with torch.no_grad():
        logits = model(input_ids=x).logits[0, len(prompt) - 1:-1] / temperature  # (R, V)
    return logits.log_softmax(-1).gather(-1, torch.tensor(response)[:, None]).squeeze(-1).tolist()


@pytest.mark.parametrize("preset", ["test", "demo"])
@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_logprobs_equal_forward_pass(models, prompts, ids, preset, temperature):
    model = models[preset]
    r = sample(model, prompts, max_new_tokens=24, temperature=temperature, generator=torch.Generator().manual_seed(0),
               **ids)
    check_invariants(r, ids["pad_token_id"], ids["eos_token_id"])
    with torch.no_grad():
        recomputed = logprobs_of(model, r.prompt_ids, r.prompt_mask, r.response_ids, r.response_mask, temperature)
    torch.testing.assert_close(recomputed, r.logprobs, atol=1e-5, rtol=0)
    # Batched and padded vs one unpadded row at a time: padding and positions are handled right.
    for b, prompt in enumerate(prompts):
        n = int(r.lengths[b])
        expected = reference_logprobs(model, prompt, r.response_ids[b, :n].tolist(), temperature)
        torch.testing.assert_close(recomputed[b, :n], torch.tensor(expected), atol=1e-5, rtol=0)


def test_logprobs_of_keeps_gradients(new_model, prompts, ids):
    model = new_model()
    r = sample(model, prompts, max_new_tokens=5, generator=torch.Generator().manual_seed(0), **ids)
    lp = logprobs_of(model, r.prompt_ids, r.prompt_mask, r.response_ids, r.response_mask, 1.0)
    lp.sum().backward()
    assert model.lm_head.weight.grad is not None and model.lm_head.weight.grad.abs().sum() > 0


# ---------------------------------------------------------------------------------------------
# (3) EOS handling, forced by biasing the logits


class Scripted(torch.nn.Module):
    """Wraps a causal LM; forces row b to emit `eos_id` at decoding step `eos_at[b]` (None: never).

    Step t is the t-th forward call (the prefill is step 0). Off its EOS step, a row's EOS logit is -inf. Finished
    rows leave the forward pass, so each row of a call is told by its left padding (the prompts' lengths differ);
    `batch_sizes` records the rows of each call.
    """

    def __init__(self, model, eos_id: int, eos_at: list[int | None]):
        super().__init__()
        self.model, self.config, self.eos_id, self.eos_at, self.calls = model, model.config, eos_id, eos_at, 0
        self.pads, self.batch_sizes = [], []

    def forward(self, **kwargs):
        out = self.model(**kwargs)
        logits = out.logits.clone()  # (b, T, V)
        mask = kwargs["attention_mask"]
        if self.calls == 0:
            self.P, self.pads = mask.size(1), (mask == 0).sum(1).tolist()
        rows = [self.pads.index(int(pads)) for pads in (mask[:, :self.P] == 0).sum(1)]
        for i, b in enumerate(rows):
            logits[i, -1, self.eos_id] = 1e4 if self.eos_at[b] == self.calls else float("-inf")
        self.calls += 1
        self.batch_sizes.append(len(rows))
        out.logits = logits
        return out


@pytest.mark.parametrize("temperature", [0.0, 1.0])
def test_eos_first_token_never_and_midway(new_model, prompts, ids, temperature):
    eos, pad = ids["eos_token_id"], ids["pad_token_id"]
    model = Scripted(new_model(), eos, eos_at=[0, None, 3, 7])
    r = sample(model, prompts, max_new_tokens=10, temperature=temperature,
               generator=torch.Generator().manual_seed(0), **ids)
    check_invariants(r, pad, eos)
    assert r.response_ids.shape == (4, 10)  # row 1 never stops, so all 10 steps run
    assert r.has_eos.tolist() == [True, False, True, True]
    assert r.lengths.tolist() == [1, 10, 4, 8]  # EOS included
    assert r.response_ids[0, 0] == eos and (r.response_ids[0, 1:] == pad).all()
    assert r.response_mask[1].tolist() == [1] * 10 and (r.response_ids[1] != eos).all()
    assert r.response_ids[2, 3] == eos and r.response_mask[2].tolist() == [1] * 4 + [0] * 6
    assert (r.response_ids[2, 4:] == pad).all() and (r.logprobs[2, 4:] == 0).all()
    # A logit of 1e4 makes EOS certain: log-prob 0 up to rounding.
    assert abs(float(r.logprobs[0, 0])) < 1e-6 and abs(float(r.logprobs[3, 7])) < 1e-6


def test_stops_when_every_row_is_done(new_model, prompts, ids):
    model = Scripted(new_model(), ids["eos_token_id"], eos_at=[0, 2, 3, 1])
    r = sample(model, prompts, max_new_tokens=30, **ids)
    assert r.response_ids.shape == (4, 4)  # the last EOS comes at step 3
    assert model.calls == 4  # prefill + 3 decoding steps: nothing is run after the last EOS
    assert r.has_eos.all() and r.lengths.tolist() == [1, 3, 4, 2]


@pytest.mark.parametrize("temperature, draws", [(0.0, "generator"), (1.0, "generator"), (1.0, "noise")])
def test_finished_rows_leave_the_pass_with_the_same_tokens(new_model, prompts, ids, temperature, draws, monkeypatch):
    # Row 0 ends with the prefill's token (1 of 4 rows: a quarter, it leaves), row 3 at step 2 (1 of 3), row 2 at
    # step 6 (1 of 2). Every token and log-prob is what the full batch gives (pruning off: a fraction above 1), with
    # the draws from a generator or from each row's own noise.
    import tether.rollout as rollout

    def run(prune: float):
        monkeypatch.setattr(rollout, "PRUNE_FRACTION", prune)
        scripted = Scripted(new_model(), ids["eos_token_id"], eos_at=[0, None, 6, 2])
        draw = {"generator": torch.Generator().manual_seed(3)} if draws == "generator" else \
            {"noise": row_noise([11, 12, 13, 14], 12)}
        r = sample(scripted, prompts, max_new_tokens=12, temperature=temperature, **draw, **ids)
        check_invariants(r, ids["pad_token_id"], ids["eos_token_id"])
        return r, scripted.batch_sizes

    (pruned, sizes), (full, full_sizes) = run(0.25), run(2.0)
    assert full_sizes == [4] * 12 and sizes == [4, 3, 3, 2, 2, 2, 2, 1, 1, 1, 1, 1]
    assert torch.equal(pruned.response_ids, full.response_ids) and torch.equal(pruned.has_eos, full.has_eos)
    torch.testing.assert_close(pruned.logprobs, full.logprobs, atol=1e-5, rtol=0)
    assert pruned.lengths.tolist() == [1, 12, 7, 3]


def test_on_step_ends_flagged_rows_without_eos(new_model, prompts, ids):
    # A server ends row 1 at step 2 (a stop string, say) and all rows at step 5: no EOS is recorded for them.
    def on_step(t, tokens):
        assert tokens.shape == (4,)
        return True if t == 5 else [b == 1 and t >= 2 for b in range(4)]

    scripted = Scripted(new_model(), ids["eos_token_id"], eos_at=[1, None, None, None])
    r = sample(scripted, prompts, max_new_tokens=12, on_step=on_step, **ids)
    check_invariants(r, ids["pad_token_id"], ids["eos_token_id"])
    assert r.lengths.tolist() == [2, 3, 6, 6] and r.has_eos.tolist() == [True, False, False, False]
    assert scripted.batch_sizes == [4, 4, 3, 2, 2, 2]  # row 0 left after its EOS at step 1, row 1 after step 2
    # pad = eos (GPT-2's tokenizer, say): the pads after row 1's end are not an EOS of its own
    same = {"eos_token_id": ids["eos_token_id"], "pad_token_id": ids["eos_token_id"]}
    r = sample(Scripted(new_model(), same["eos_token_id"], eos_at=[1, None, None, None]), prompts, max_new_tokens=12,
               on_step=on_step, **same)
    assert r.lengths.tolist() == [2, 3, 6, 6] and r.has_eos.tolist() == [True, False, False, False]
    # None: a callback that only streams ends nothing; flags for the wrong number of rows are refused
    greedy = {"max_new_tokens": 6, "temperature": 0.0, **ids}
    quiet = sample(new_model(), prompts, on_step=lambda t, tokens: None, **greedy)
    assert torch.equal(quiet.response_ids, sample(new_model(), prompts, **greedy).response_ids)
    with pytest.raises(ValueError, match="on_step: returned"):
        sample(new_model(), prompts, max_new_tokens=6, on_step=lambda t, tokens: [False], **ids)


# ---------------------------------------------------------------------------------------------
# (4) truncation: top-k and top-p


def test_filter_logits_by_hand():
    # probs 0.5, 0.3, 0.15, 0.05.
    logits = torch.tensor([[0.5, 0.3, 0.15, 0.05]]).log()

    def kept(**kw) -> list[bool]:
        return torch.isfinite(filter_logits(logits, **kw))[0].tolist()

    assert kept(top_k=2) == [True, True, False, False]
    # Mass above each token: 0, 0.5, 0.8, 0.95; a token is dropped once that mass reaches top_p.
    assert kept(top_p=0.45) == [True, False, False, False]  # 0.5 >= 0.45
    assert kept(top_p=0.75) == [True, True, False, False]  # 0.8 >= 0.75
    assert kept(top_p=0.9) == [True, True, True, False]  # 0.95 >= 0.9
    assert kept(top_k=3, top_p=0.75) == [True, True, False, False]
    assert kept() == [True] * 4
    # Kept logits are unchanged, and the order of the vocabulary does not matter.
    shuffled = logits[:, [2, 0, 3, 1]]
    assert torch.isfinite(filter_logits(shuffled, top_p=0.75))[0].tolist() == [False, True, False, True]
    assert torch.equal(filter_logits(logits, top_k=2)[0, :2], logits[0, :2])


def test_draw_matches_probabilities():
    # 20000 rows drawn from probs (0.5, 0.3, 0.2, 0): frequency std <= sqrt(.25 / 20000) = 0.0035.
    scaled = torch.tensor([0.5, 0.3, 0.2, 0.0]).log().expand(20000, 4)
    counts = torch.bincount(_draw(scaled, torch.Generator().manual_seed(0)), minlength=4) / 20000
    assert counts[3] == 0  # a -inf logit is never drawn
    torch.testing.assert_close(counts[:3], torch.tensor([0.5, 0.3, 0.2]), atol=0.015, rtol=0)


@pytest.mark.parametrize("truncation", [{"top_k": 1}, {"top_p": 1e-6}])
def test_top_k_1_and_tiny_top_p_are_greedy(models, prompts, ids, truncation):
    model = models["test"]
    greedy = sample(model, prompts, max_new_tokens=16, temperature=0.0, **ids)
    r = sample(model, prompts, max_new_tokens=16, temperature=1.0, generator=torch.Generator().manual_seed(3),
               **truncation, **ids)
    assert torch.equal(r.response_ids, greedy.response_ids)
    # Log-probs are of the untruncated distribution (not 0, as they would be after renormalising to one token).
    torch.testing.assert_close(r.logprobs, greedy.logprobs, atol=1e-6, rtol=0)
    assert (r.logprobs[r.response_mask.bool()] < 0).any()


# ---------------------------------------------------------------------------------------------
# (5) determinism


def test_same_generator_seed_same_rollout(models, prompts, ids):
    model = models["test"]

    def run(seed: int) -> Rollout:
        return sample(model, prompts, max_new_tokens=16, temperature=0.9,
                      generator=torch.Generator().manual_seed(seed), **ids)

    a, b, c = run(7), run(7), run(8)
    for field in ("response_ids", "response_mask", "logprobs", "has_eos", "lengths"):
        assert torch.equal(getattr(a, field), getattr(b, field)), field
    assert not torch.equal(a.response_ids, c.response_ids)
    # Without a generator the global RNG is used: torch.manual_seed makes it repeatable too.
    torch.manual_seed(5)
    d = sample(model, prompts, max_new_tokens=16, **ids)
    torch.manual_seed(5)
    e = sample(model, prompts, max_new_tokens=16, **ids)
    assert torch.equal(d.response_ids, e.response_ids)


def test_temperature_changes_logprobs_consistently(models, prompts, ids):
    """At temperature T, log p = logits/T - logsumexp(logits/T); check one token by hand from raw logits."""
    model = models["test"]
    r = sample(model, prompts[:1], max_new_tokens=1, temperature=0.5, generator=torch.Generator().manual_seed(0),
               **ids)
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([prompts[0]])).logits[0, -1]  # (V,)
    token = int(r.response_ids[0, 0])
    expected = float(logits[token] / 0.5 - torch.logsumexp(logits / 0.5, -1))
    assert math.isclose(float(r.logprobs[0, 0]), expected, abs_tol=1e-5)


def test_rejects_bad_arguments(models, prompts, ids):
    with pytest.raises(ValueError, match="max_new_tokens"):
        sample(models["test"], prompts, max_new_tokens=0, **ids)
    with pytest.raises(ValueError, match="prompt_ids"):
        sample(models["test"], [[1, 2], []], max_new_tokens=4, **ids)
    with pytest.raises(ValueError, match="top_p"):
        sample(models["test"], prompts, max_new_tokens=4, top_p=0.0, **ids)
    with pytest.raises(ValueError, match="cache"):
        sample(models["test"], prompts, max_new_tokens=4, cache="paged", **ids)
