"""tether.math.losses and tether.optim against numbers worked out by hand (arithmetic in the comments)."""
from __future__ import annotations

import math

import pytest
import torch

from tether.math.losses import IGNORE_INDEX, shift_labels, token_nll_sum
from tether.optim import adamw, lr_at


# -- shift_labels ----------------------------------------------------------------------------------
def test_shift_labels_hand_example():
    input_ids = torch.tensor([[5, 6, 7, 8, 9]])
    loss_mask = torch.tensor([[0, 0, 1, 1, 0]])  # train on the tokens 7 and 8 only
    # labels[t] = input_ids[t + 1] where loss_mask[t + 1] == 1:
    #   t=0 -> next 6, mask 0 -> -100;  t=1 -> next 7, mask 1 -> 7;  t=2 -> next 8, mask 1 -> 8
    #   t=3 -> next 9, mask 0 -> -100;  t=4 -> no next token -> -100
    expected = torch.tensor([[-100, 7, 8, -100, -100]])
    labels = shift_labels(input_ids, loss_mask)
    assert torch.equal(labels, expected)
    assert labels.dtype == input_ids.dtype
    assert torch.equal(input_ids, torch.tensor([[5, 6, 7, 8, 9]]))  # input untouched


def test_shift_labels_batch_rows_are_independent():
    input_ids = torch.tensor([[1, 2, 3], [4, 5, 6]])
    loss_mask = torch.tensor([[1, 1, 1], [1, 0, 1]])  # the mask of position 0 never matters
    assert torch.equal(shift_labels(input_ids, loss_mask), torch.tensor([[2, 3, -100], [-100, 6, -100]]))
    assert IGNORE_INDEX == -100


# -- token_nll_sum ---------------------------------------------------------------------------------
def test_uniform_logits_cost_ln_vocab_per_counted_token():
    logits = torch.zeros(2, 3, 4)  # V = 4, every token has probability 1/4 -> nll ln 4 each
    labels = torch.tensor([[1, -100, 3], [0, 2, -100]])  # n = 4 counted tokens
    nll, count = token_nll_sum(logits, labels)
    assert count.item() == 4
    assert nll.item() == pytest.approx(4 * math.log(4))  # 4 * 1.386294 = 5.545177


def hand_logits(requires_grad: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    logits = torch.tensor([[[0.0, math.log(2), math.log(3), math.log(4)],
                            [0.0, 0.0, math.log(2), math.log(6)],
                            [7.0, -3.0, 1.0, 2.0]]], requires_grad=requires_grad)  # (1, 3, 4)
    labels = torch.tensor([[3, 0, -100]])  # (1, 3): the third position is ignored
    return logits, labels


def test_token_nll_hand_worked():
    logits, labels = hand_logits()
    # token 1: exp(logits) = [1, 2, 3, 4], sum 10, label 3 -> -log(4/10) = ln 2.5 = 0.916291
    # token 2: exp(logits) = [1, 1, 2, 6], sum 10, label 0 -> -log(1/10) = ln 10  = 2.302585
    # token 3: ignored.  total = ln 2.5 + ln 10 = ln 25 = 3.218876, count 2
    nll, count = token_nll_sum(logits, labels)
    assert nll.item() == pytest.approx(math.log(25), abs=1e-6)
    assert count.item() == 2


def test_token_nll_gradient_hand_worked():
    logits, labels = hand_logits(requires_grad=True)
    token_nll_sum(logits, labels)[0].backward()
    # d nll / d logits = softmax - onehot(label) at counted positions, 0 at ignored ones
    #   token 1: [0.1, 0.2, 0.3, 0.4 - 1] = [0.1, 0.2, 0.3, -0.6]
    #   token 2: [0.1 - 1, 0.1, 0.2, 0.6] = [-0.9, 0.1, 0.2, 0.6]
    expected = torch.tensor([[[0.1, 0.2, 0.3, -0.6], [-0.9, 0.1, 0.2, 0.6], [0.0, 0.0, 0.0, 0.0]]])
    torch.testing.assert_close(logits.grad, expected, atol=1e-6, rtol=0)


def test_ignored_labels_contribute_nothing():
    logits, labels = hand_logits()
    wild = logits.clone()
    wild[0, 2] = torch.tensor([100.0, -100.0, 50.0, 0.0])  # change only the ignored position
    assert token_nll_sum(wild, labels)[0].item() == pytest.approx(math.log(25), abs=1e-6)
    nll, count = token_nll_sum(logits, torch.full((1, 3), -100))
    assert (nll.item(), count.item()) == (0.0, 0)


def test_sum_splits_over_micro_batches():
    # Sums add across micro-batches, so dividing by the whole batch's count gives the full-batch mean.
    torch.manual_seed(0)
    logits = torch.randn(4, 5, 7)
    labels = torch.randint(0, 7, (4, 5))
    labels[0, :3] = -100
    labels[3, 1] = -100
    whole, n = token_nll_sum(logits, labels)
    parts = [token_nll_sum(logits[i:i + 2], labels[i:i + 2]) for i in (0, 2)]
    assert sum(p[1] for p in parts).item() == n.item() == 20 - 4
    torch.testing.assert_close(sum(p[0] for p in parts), whole)


def test_half_precision_logits_are_summed_in_float32():
    logits, labels = hand_logits()
    nll, _ = token_nll_sum(logits.to(torch.bfloat16), labels)
    assert nll.dtype == torch.float32
    assert nll.item() == pytest.approx(math.log(25), abs=0.05)  # bf16 rounds ln 2, ln 3, ln 6


def test_token_nll_gradcheck_float64():
    torch.manual_seed(0)
    logits = torch.randn(2, 3, 5, dtype=torch.float64, requires_grad=True)
    labels = torch.tensor([[1, -100, 4], [0, 2, -100]])
    assert token_nll_sum(logits, labels)[0].dtype == torch.float64
    assert torch.autograd.gradcheck(lambda x: token_nll_sum(x, labels)[0], (logits,))


# -- lr_at -----------------------------------------------------------------------------------------
# peak 0.01, warmup 4, total 14 (10 decay steps), min_ratio 0.1 -> floor 0.001
PEAK, WARMUP, TOTAL = 0.01, 4, 14


@pytest.mark.parametrize("step,expected", [
    (0, 0.0025),   # 0.01 * 1/4
    (1, 0.005),    # 0.01 * 2/4
    (2, 0.0075),   # 0.01 * 3/4
    (3, 0.01),     # 0.01 * 4/4: the last warmup step reaches the peak
    (4, 0.01),     # progress 0: 0.01 * (0.1 + 0.9 * 0.5 * (1 + cos 0)) = 0.01
    (9, 0.0055),   # progress 5/10 = 0.5: 0.01 * (0.1 + 0.9 * 0.5 * (1 + cos(pi/2))) = 0.01 * 0.55
    (14, 0.001),   # progress 1: 0.01 * (0.1 + 0.9 * 0.5 * (1 + cos pi)) = 0.01 * 0.1
    (15, 0.001),   # past the end: progress clipped to 1
    (1000, 0.001),
])
def test_lr_schedule_hand_worked(step, expected):
    assert lr_at(step, PEAK, WARMUP, TOTAL, min_ratio=0.1) == pytest.approx(expected, rel=1e-12)


def test_lr_cosine_quarter_point():
    # warmup 4, total 12: step 6 has progress 2/8 = 0.25; cos(pi/4) = 0.7071068
    # 0.5 * (1 + 0.7071068) = 0.8535534; 0.1 + 0.9 * 0.8535534 = 0.8681981; times peak 0.01
    assert lr_at(6, 0.01, 4, 12, min_ratio=0.1) == pytest.approx(0.008681981, rel=1e-6)


def test_lr_without_warmup_starts_at_peak_and_decays_monotonically():
    assert lr_at(0, 1.0, 0, 10, min_ratio=0.0) == 1.0
    assert lr_at(10, 1.0, 0, 10, min_ratio=0.0) == pytest.approx(0.0, abs=1e-15)
    lrs = [lr_at(s, PEAK, WARMUP, TOTAL) for s in range(TOTAL + 3)]
    assert lrs[:4] == sorted(lrs[:4]) and lrs[3:] == sorted(lrs[3:], reverse=True)


# -- adamw ----------------------------------------------------------------------------------------
def test_adamw_decays_matrices_only():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(3, 2), torch.nn.LayerNorm(2), torch.nn.Linear(2, 2))
    model[2].weight.requires_grad_(False)  # frozen: in no group at all
    opt = adamw(model, lr=0.1, weight_decay=0.5, betas=(0.8, 0.9))
    decay, no_decay = opt.param_groups
    assert [id(p) for p in decay["params"]] == [id(model[0].weight)]
    assert {id(p) for p in no_decay["params"]} == {id(model[0].bias), id(model[1].weight), id(model[1].bias),
                                                   id(model[2].bias)}
    assert (decay["weight_decay"], no_decay["weight_decay"]) == (0.5, 0.0)
    assert (decay["lr"], decay["betas"]) == (0.1, (0.8, 0.9))

    # With zero gradients Adam's step is 0 / (0 + eps) = 0, leaving only decoupled decay:
    # p <- p * (1 - lr * wd) = p * (1 - 0.1 * 0.5) = 0.95 p for matrices; 1-D params stay put.
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    opt.step()
    after = dict(model.named_parameters())
    torch.testing.assert_close(after["0.weight"], before["0.weight"] * 0.95)
    for name in ("0.bias", "1.weight", "1.bias", "2.weight", "2.bias"):
        assert torch.equal(after[name], before[name]), name
