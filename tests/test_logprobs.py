"""tether.logprobs: the response-only LM head and the shared-prompt pass give the plain path's log-probs and
gradients, on tiny random-init models of the real architectures (tests/archkit.py)."""
import random

import pytest
import torch

import archkit
from tether import logprobs
from tether.logprobs import PLAIN, FastPaths, chunked_token_logps, prompt_prefixes, response_logps

SLIDING = {"gemma2", "gemma3", "mistral"}  # sliding-window layers: no shared prompts, response-only head still


def batch(vocab: int, seed: int = 0) -> tuple[list[list[int]], list[list[int]]]:
    """Six sequences: three prompts of 24-30 tokens, each followed by two responses of 2-7 tokens (a pair), the
    response mask 1 on the response."""
    rng = random.Random(seed)
    seqs, masks = [], []
    for _ in range(3):
        prompt = [rng.randrange(3, vocab) for _ in range(rng.randint(24, 30))]
        for _ in range(2):
            response = [rng.randrange(3, vocab) for _ in range(rng.randint(2, 7))]
            seqs.append(prompt + response)
            masks.append([0] * len(prompt) + [1] * len(response))
    return seqs, masks


def logps_and_grads(model, seqs, masks, fast) -> tuple[torch.Tensor, dict]:
    model.zero_grad()
    logps, counts = response_logps(model, seqs, masks, pad_id=0, fast=fast)
    weights = torch.linspace(-1.0, 2.0, len(seqs))  # distinct weights: a row swapped or dropped changes the grads
    (logps * weights).sum().backward()
    assert counts.tolist() == [sum(m) for m in masks]
    return logps.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("arch", sorted(archkit.ARCHITECTURES))
@pytest.mark.parametrize("fast", [FastPaths(True, False), FastPaths(False, True), FastPaths(True, True),
                                  FastPaths(False, True, tree=False), FastPaths(True, True, tree=False)],
                         ids=["head", "prompts", "both", "prompts-cached", "both-cached"])
def test_fast_paths_equal_the_plain_path(arch, fast, real_root):
    model = archkit.build_model(arch, archkit.tokenizer("base", real_root)).eval()
    seqs, masks = batch(model.config.vocab_size)
    assert logprobs.head_parts(model) is not None  # every archkit architecture is verified
    assert logprobs.shares_prompts(model) == logprobs.tree_shares(model) == (arch not in SLIDING)
    assert prompt_prefixes(seqs, masks) is not None  # the plan shares here, so the shared pass is what is tested
    plain, plain_grads = logps_and_grads(model, seqs, masks, PLAIN)
    got, grads = logps_and_grads(model, seqs, masks, fast)
    torch.testing.assert_close(got, plain, atol=1e-5, rtol=0)
    assert grads.keys() == plain_grads.keys()
    for name, g in grads.items():
        torch.testing.assert_close(g, plain_grads[name], atol=1e-5, rtol=1e-5, msg=name)


@pytest.mark.parametrize("tree", [True, False], ids=["rows", "cached"])
def test_shared_prompts_break_without_the_prefix_positions(tree, real_root, monkeypatch):
    """The test above can fail: tails at the positions of their place in the pass (a cached tail's from 0, a row's
    from its prefix's end plus the tails before it) give other log-probs."""
    model = archkit.build_model("llama", archkit.tokenizer("base", real_root)).eval()
    seqs, masks = batch(model.config.vocab_size)
    plain, _ = response_logps(model, seqs, masks, 0, PLAIN)
    original = logprobs.forward_token_logps
    monkeypatch.setattr(logprobs, "forward_token_logps", lambda m, ids, attn, labels, r, position_ids, **kw: original(
        m, ids, attn, labels, r, position_ids=torch.arange(ids.size(1)).expand_as(ids), **kw))
    got, _ = response_logps(model, seqs, masks, 0, FastPaths(False, True, tree))
    assert (got - plain).abs().max() > 1e-4  # tens of times the tolerance above (a random tiny model)


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_prompt_rows_under_eager_attention_equal_the_plain_path(arch, real_root):
    """Eager attention adds the mask to the scores: the rows' mask is additive there (boolean under sdpa)."""
    tok = archkit.tokenizer("base", real_root)
    model = archkit.build_model(arch, tok).eval()
    model.set_attn_implementation("eager")
    assert logprobs.tree_shares(model)
    seqs, masks = batch(model.config.vocab_size)
    plain, plain_grads = logps_and_grads(model, seqs, masks, PLAIN)
    got, grads = logps_and_grads(model, seqs, masks, FastPaths())
    torch.testing.assert_close(got, plain, atol=1e-5, rtol=0)
    for name, g in grads.items():
        torch.testing.assert_close(g, plain_grads[name], atol=1e-5, rtol=1e-5, msg=name)


def test_prompt_prefixes_cut_before_each_prompts_last_token():
    # prompts of 10 tokens, responses of 2: each prefix is the prompt's first 9 tokens; padded cost
    # plain 4 x 12 = 48 against prefixes 2 x 9 + 32 and tails 4 x 3 + 32 = 94: not worth it
    seqs = [[5] * 10 + [1, 2], [5] * 10 + [3, 4], [6] * 10 + [1, 2], [6] * 10 + [3, 4]]
    masks = [[0] * 10 + [1, 1]] * 4
    assert prompt_prefixes(seqs, masks) is None
    # prompts of 100: plain 4 x 102 = 408, shared 2 x 99 + 32 + 4 x 3 + 32 = 274
    seqs = [[5] * 100 + [1, 2], [5] * 100 + [3, 4], [6] * 100 + [1, 2], [6] * 100 + [3, 4]]
    assert prompt_prefixes(seqs, [[0] * 100 + [1, 1]] * 4) == [99] * 4
    # a sequence counted from its second token has no prefix to share
    assert prompt_prefixes(seqs, [[0] * 100 + [1, 1]] * 3 + [[0] + [1] * 101]) is None


def test_chunked_head_equals_one_chunk():
    torch.manual_seed(0)
    head = torch.nn.Linear(8, 11, bias=False)
    hidden, targets = torch.randn(7, 8), torch.randint(0, 11, (7,))
    whole = torch.log_softmax(head(hidden), -1).gather(1, targets[:, None])[:, 0]
    torch.testing.assert_close(chunked_token_logps(hidden, targets, head, chunk=3), whole)
    # softcap 2: cap * tanh(logits / cap) before the softmax
    capped = torch.log_softmax(2 * torch.tanh(head(hidden) / 2), -1).gather(1, targets[:, None])[:, 0]
    torch.testing.assert_close(chunked_token_logps(hidden, targets, head, softcap=2.0, chunk=2), capped)


def test_unverified_architecture_takes_the_plain_path(real_root, monkeypatch):
    model = archkit.build_model("llama", archkit.tokenizer("base", real_root))
    monkeypatch.setattr(logprobs, "VERIFIED", frozenset())
    assert logprobs.head_parts(model) is None and not logprobs.shares_prompts(model)


@pytest.mark.parametrize("tree", [True, False], ids=["rows", "cached"])
def test_prompts_and_tails_in_several_length_chunks_equal_the_plain_path(tree, real_root):
    """Prompts of 8 and 120 tokens, responses of 3 and 90: prefixes and tails each run in two length chunks, the
    tails attending to the joined caches (the short prefixes padded); or the rows of prompts and their tails, in
    two length chunks."""
    model = archkit.build_model("qwen2", archkit.tokenizer("base", real_root)).eval()
    rng = random.Random(1)
    tok = lambda n: [rng.randrange(3, model.config.vocab_size) for _ in range(n)]  # noqa: E731
    seqs, masks = [], []
    for p_len, r_lens in ((8, (3, 90)), (120, (3, 90)), (9, (4, 88))):
        prompt = tok(p_len)
        for r in r_lens:
            seqs.append(prompt + tok(r))
            masks.append([0] * p_len + [1] * r)
    cut = prompt_prefixes(seqs, masks)
    assert cut == [7, 7, 119, 119, 8, 8]
    assert len(logprobs.chunked_cost(sorted({7, 119, 8}))[0]) == 2
    assert len(logprobs.chunked_cost(sorted(len(s) - k for s, k in zip(seqs, cut)))[0]) == 2
    assert len(logprobs.chunked_cost(sorted([7 + 4 + 91, 119 + 4 + 91, 8 + 5 + 89]))[0]) == 2
    plain, plain_grads = logps_and_grads(model, seqs, masks, PLAIN)
    got, grads = logps_and_grads(model, seqs, masks, FastPaths(tree=tree))
    torch.testing.assert_close(got, plain, atol=1e-5, rtol=1e-6)
    for name, g in grads.items():
        torch.testing.assert_close(g, plain_grads[name], atol=1e-5, rtol=1e-5, msg=name)


@pytest.mark.parametrize("arch", ["llama", "gemma2", "opt"])  # gemma2: the final logit softcap
def test_sft_loss_with_the_response_only_head_equals_the_plain_loss(arch, real_root):
    """tether sft's batch_loss: two assistant turns counted per conversation (the user turn between them not)."""
    from tether.stages.lm import batch_loss
    from tether.training import Example, collate

    model = archkit.build_model(arch, archkit.tokenizer("base", real_root)).eval()
    rng = random.Random(2)
    examples = []
    for n in (30, 22, 41):
        ids = [rng.randrange(3, model.config.vocab_size) for _ in range(n)]
        examples.append(Example(ids, [0] * 5 + [1] * 6 + [0] * 7 + [1] * (n - 18)))
    batch = collate(examples, 0)
    out = {}
    for response_only in (False, True):
        model.zero_grad()
        nll, count = batch_loss(model, batch, response_only)
        nll.backward()
        out[response_only] = (float(nll.detach()), int(count), [p.grad.clone() for p in model.parameters()])
    assert out[True][1] == out[False][1] == sum(sum(e.loss_mask[1:]) for e in examples)
    assert out[True][0] == pytest.approx(out[False][0], abs=1e-5, rel=1e-6)
    for g, ref in zip(out[True][2], out[False][2], strict=True):
        torch.testing.assert_close(g, ref, atol=1e-5, rtol=1e-5)


def lopsided(vocab: int) -> tuple[list[list[int]], list[list[int]]]:
    """Two prompts of 155 and 20 tokens with two responses each, of about 100 tokens: sequences up to 255 tokens,
    every tail in one length chunk after prefixes joined at width 154, so the first prompt's tails, padded to the
    longest tail (106), would count positions up to 259 if padding counted on."""
    rng = random.Random(2)
    tok = lambda n: [rng.randrange(3, vocab) for _ in range(n)]  # noqa: E731
    seqs, masks = [], []
    for p_len, r_lens in ((155, (100, 98)), (20, (105, 103))):
        prompt = tok(p_len)
        for r in r_lens:
            seqs.append(prompt + tok(r))
            masks.append([0] * p_len + [1] * r)
    return seqs, masks


@pytest.mark.parametrize("tree", [True, False], ids=["rows", "cached"])
def test_padding_after_a_long_prompt_stays_inside_gpt2s_position_table(tree, real_root):
    """GPT-2 learns one embedding per position (n_positions = 256 here): the shared-prompt pass of sequences that
    fit it gives the plain pass's log-probs and gradients (it used to index past the table: IndexError); so does a
    row of a prompt and its two tails (354 tokens), whose positions are each sequence's own."""
    model = archkit.build_model("gpt2", archkit.tokenizer("base", real_root)).eval()
    assert model.config.n_positions == 256
    seqs, masks = lopsided(model.config.vocab_size)
    assert prompt_prefixes(seqs, masks) == [154, 154, 19, 19] and max(map(len, seqs)) == 255
    assert len(logprobs.chunked_cost(sorted(len(s) - k for s, k in zip(seqs, [154, 154, 19, 19])))[0]) == 1
    plain, plain_grads = logps_and_grads(model, seqs, masks, PLAIN)
    got, grads = logps_and_grads(model, seqs, masks, FastPaths(tree=tree))
    torch.testing.assert_close(got, plain, atol=1e-5, rtol=1e-6)
    for name, g in grads.items():
        torch.testing.assert_close(g, plain_grads[name], atol=1e-5, rtol=1e-5, msg=name)
