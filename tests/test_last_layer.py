"""tether.last_layer: the last decoder layer's feed-forward block runs at the read positions only, and what is read
(log-probs, rewards) and every gradient equal the full pass's, on tiny random-init models of the real architectures
(tests/archkit.py); where it cannot be exact it does nothing."""
import contextlib

import pytest
import torch

import archkit
from tether import last_layer, logprobs
from tether.last_layer import last_decoder_layer, read_rows_only
from tether.logprobs import PLAIN, FastPaths
from tether.reward import RewardModel
from tether.rm_batch import Pair, collate_pairs, pair_rewards
from tether.rollout import logprobs_of
from tether.stages.online.algorithms import Experience, policy_forward
from tether.value import ValueHead
from test_logprobs import batch, logps_and_grads

PRUNED = [a for a in sorted(archkit.ARCHITECTURES) if a != "opt"]  # OPT's layer has no `mlp` child


def mlp_rows(model, body=None) -> list[int]:
    """Records the rows each call of the last layer's first feed-forward matmul sees."""
    mlp = last_decoder_layer(body if body is not None else logprobs.head_parts(model)[0]).mlp
    first = next(m for m in mlp.modules() if hasattr(m, "weight") and m.weight.dim() == 2)
    seen: list[int] = []
    first.register_forward_hook(lambda module, args, out: seen.append(args[0].reshape(-1, args[0].size(-1)).size(0)))
    return seen


@pytest.mark.parametrize("arch", PRUNED)
@pytest.mark.parametrize("fast", [FastPaths(True, False), FastPaths(True, True)], ids=["head", "shared-prompts"])
def test_the_last_mlp_sees_only_the_counted_rows_and_the_result_is_the_full_pass(arch, fast, real_root):
    model = archkit.build_model(arch, archkit.tokenizer("base", real_root)).eval()
    seqs, masks = batch(model.config.vocab_size)
    plain, plain_grads = logps_and_grads(model, seqs, masks, PLAIN)
    seen = mlp_rows(model)
    got, grads = logps_and_grads(model, seqs, masks, fast)
    counted = sum(sum(m) for m in masks)
    assert seen and sum(seen) == counted  # the block ran on the counted positions alone
    torch.testing.assert_close(got, plain, atol=1e-5, rtol=0)
    assert grads.keys() == plain_grads.keys()
    for name, g in grads.items():
        torch.testing.assert_close(g, plain_grads[name], atol=1e-5, rtol=1e-5, msg=name)


def test_other_rows_give_other_log_probs(real_root, monkeypatch):
    """The test above can fail: the block run at the positions one to the left of the counted ones (the hidden
    state that predicts the previous token) changes the log-probs."""
    model = archkit.build_model("llama", archkit.tokenizer("base", real_root)).eval()
    seqs, masks = batch(model.config.vocab_size)
    plain, _ = logps_and_grads(model, seqs, masks, PLAIN)
    real = last_layer._rows_forward

    def shifted(mlp, hidden):
        mlp._tether_read_rows = mlp._tether_read_rows - 1
        return real(mlp, hidden)

    monkeypatch.setattr(last_layer, "_rows_forward", shifted)
    got, _ = logps_and_grads(model, seqs, masks, FastPaths(True, False))
    assert (got - plain).abs().max() > 1e-3


def test_opt_and_checkpointing_run_the_whole_layer(real_root):
    """No `mlp` child (OPT), or activation checkpointing (the backward reruns the layer after the block), and the
    block changes nothing: the whole layer runs, and the backward works."""
    opt = archkit.build_model("opt", archkit.tokenizer("base", real_root))
    with read_rows_only(opt, opt.model.decoder, torch.tensor([0, 1])) as pruned:
        assert not pruned
    model = archkit.build_model("llama", archkit.tokenizer("base", real_root)).eval()
    if hasattr(model, "activation_checkpointing_enable"):  # its name since transformers 5.x
        model.activation_checkpointing_enable({"use_reentrant": False})
    else:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model.train()  # transformers checkpoints in training mode only
    with read_rows_only(model, model.model, torch.tensor([0, 1])) as pruned:
        assert not pruned
    seqs, masks = batch(model.config.vocab_size)
    seen = mlp_rows(model)
    logps_and_grads(model, seqs, masks, FastPaths(True, False))
    assert sum(seen) >= sum(len(s) for s in seqs)  # every position, forward and its rerun
    assert "forward" not in vars(model.model.layers[-1].mlp)  # the block left the module as it was


def test_the_block_keeps_the_mlps_dtype_under_autocast(real_root):
    """Under bf16 autocast the block's input stays float32 and its output is bfloat16: the pruned output is
    bfloat16 too (CUDA's index_copy refuses a float32 tensor filled from a bfloat16 one), equal to the full
    block's at the read rows."""
    model = archkit.build_model("llama", archkit.tokenizer("base", real_root)).eval()
    mlp = model.model.layers[-1].mlp
    hidden, rows = torch.randn(2, 5, model.config.hidden_size), torch.tensor([1, 4, 7])
    with torch.autocast("cpu", torch.bfloat16):
        full = mlp(hidden)
        with read_rows_only(model, model.model, rows) as pruned:
            got = mlp(hidden)
    assert pruned and full.dtype == got.dtype == torch.bfloat16
    torch.testing.assert_close(got.reshape(10, -1)[rows], full.reshape(10, -1)[rows], atol=1e-2, rtol=1e-2)
    assert not got.reshape(10, -1)[[0, 2, 3, 5, 6, 8, 9]].any()


def test_active_dropout_in_the_block_runs_the_whole_block(real_root):
    """GPT-2 in training mode draws a dropout mask in its MLP: drawn for the read rows only it would be another
    draw than the full pass's (and than a checkpointed run's), so nothing is skipped; in eval mode, or with dropout
    0, the block is pruned."""
    model = archkit.build_model("gpt2", archkit.tokenizer("base", real_root))
    assert model.config.resid_pdrop > 0
    for training, pruned in ((True, False), (False, True)):
        model.train(training)
        with read_rows_only(model, model.transformer, torch.tensor([0])) as got:
            assert got == pruned
    model.train()
    for m in model.modules():
        if isinstance(m, torch.nn.Dropout):
            m.p = 0.0
    with read_rows_only(model, model.transformer, torch.tensor([0])) as got:
        assert got


def test_unlisted_types_and_nesting(real_root, monkeypatch):
    """Only the model types of `PRUNABLE` (all of tests/archkit.py but OPT) are pruned; entering the block inside
    itself is an error, not the outer rows silently applied to the inner pass."""
    assert {archkit.build_model(a, archkit.tokenizer("base", real_root)).config.model_type
            for a in PRUNED} <= last_layer.PRUNABLE
    model = archkit.build_model("llama", archkit.tokenizer("base", real_root)).eval()
    with read_rows_only(model, model.model, torch.tensor([0])) as pruned:
        assert pruned
        with pytest.raises(RuntimeError, match="inside itself"):
            with read_rows_only(model, model.model, torch.tensor([1])):
                pass
    monkeypatch.setattr(last_layer, "PRUNABLE", frozenset())
    with read_rows_only(model, model.model, torch.tensor([0])) as pruned:
        assert not pruned


@pytest.mark.parametrize("arch", ["llama", "gpt2", "qwen2"])
def test_reward_rows_score_as_the_whole_sequences(arch, real_root):
    """The reward model's rows (each prompt and its responses, `rm_batch.collate_pairs(rows=True)`): every reward
    and gradient equal to the whole sequences' through the classifier, with the last block run on one position
    per distinct sequence."""
    tok = archkit.tokenizer("base", real_root)
    reward = RewardModel(archkit.build_model(arch, tok), tok, kind="causal").eval()
    seqs, masks = batch(len(tok))  # three prompts of 24-30 tokens, two responses each
    pairs = [Pair(str(i), seqs[i], seqs[i + 1], 1.0, 0.0, sum(masks[i]), sum(masks[i + 1])) for i in (0, 2, 4)]
    seen = mlp_rows(reward.classifier, reward.body)
    out = {}
    for rows in (False, True):
        reward.zero_grad()
        seen.clear()
        r_a, r_b, _ = pair_rewards(reward, collate_pairs(pairs, reward.pad_id, share_prefixes=rows, rows=rows))
        (r_a - 2 * r_b).sum().backward()
        out[rows] = (torch.cat([r_a, r_b]).detach(), {n: p.grad.clone() for n, p in reward.named_parameters()})
        if rows:  # one position per distinct sequence (padded whole sequences otherwise, every position)
            assert sum(seen) == len(seqs)
        else:
            assert sum(seen) >= sum(len(s) for s in seqs)
    torch.testing.assert_close(out[True][0], out[False][0], atol=1e-5, rtol=0)
    for name, g in out[True][1].items():
        torch.testing.assert_close(g, out[False][1][name], atol=1e-5, rtol=1e-5, msg=name)


def rollout_rows(vocab: int) -> Experience:
    """Three left-padded prompts (P = 9) and responses (R = 6) ending at different steps."""
    gen = torch.Generator().manual_seed(3)
    prompt_ids = torch.randint(3, vocab, (3, 9), generator=gen)
    prompt_mask = torch.ones_like(prompt_ids)
    prompt_mask[0, :4], prompt_mask[2, :2] = 0, 0
    response_ids = torch.randint(3, vocab, (3, 6), generator=gen)
    response_mask = torch.tensor([[1] * 6, [1] * 3 + [0] * 3, [1] * 5 + [0]])
    return Experience(prompt_ids.masked_fill(prompt_mask == 0, 0), prompt_mask, response_ids * response_mask,
                      response_mask, torch.tensor([False, True, True]), torch.zeros(3))


@pytest.mark.parametrize("arch", ["llama", "gpt2", "gemma2"])
def test_online_passes_read_the_last_columns_only(arch, real_root, monkeypatch):
    """PPO's policy pass (log-probs and the value head on its hidden states) and the old/reference log-probs
    (`rollout.logprobs_of`): the last block on the response columns (and the one before) only, and the log-probs,
    values and gradients of the whole layer."""
    model = archkit.build_model(arch, archkit.tokenizer("base", real_root)).eval()
    critic = ValueHead(model.config.hidden_size)
    torch.nn.init.normal_(critic.linear.weight)  # zero-initialised, it would read nothing
    rows = rollout_rows(model.config.vocab_size)
    seen = mlp_rows(model)
    out = {}
    for pruned in (True, False):
        if not pruned:
            monkeypatch.setattr(logprobs, "read_rows_only", lambda *a: contextlib.nullcontext(False))
        model.zero_grad()
        seen.clear()
        got = policy_forward(model, critic, rows, temperature=0.7)
        (got.logprobs.sum() + got.values.sum()).backward()
        with torch.no_grad():
            old = logprobs_of(model, rows.prompt_ids, rows.prompt_mask, rows.response_ids, rows.response_mask, 0.7)
        assert sum(seen) == (2 * 3 * (6 + 1) if pruned else 2 * 3 * (9 + 6))
        out[pruned] = (got.logprobs.detach(), got.values.detach(), old,
                       {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None})
    for got, want in zip(out[True][:3], out[False][:3]):
        torch.testing.assert_close(got, want, atol=1e-5, rtol=0)
    assert out[True][3].keys() == out[False][3].keys()
    for name, g in out[True][3].items():
        torch.testing.assert_close(g, out[False][3][name], atol=1e-5, rtol=1e-5, msg=name)
