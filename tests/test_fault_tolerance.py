"""Fault tolerance (issue 8, item 4): the non-finite guard, the save guard, and atomic checkpoints under kill -9.

- NaN injection: the loss of one training step of SFT, RM, DPO and PPO runs ("test" preset) is made NaN. With
  nonfinite=skip the run finishes, the step is counted (nonfinite_skips), its parameters equal the pre-step ones
  and every saved tensor is finite; with nonfinite=halt the run stops with an error naming the step, and the
  previous checkpoint loads.
- The save guard refuses NaN or inf tensors before writing anything.
- kill -9: forked writer processes are SIGKILLed mid-save, at fixed points (blocked there by a patched helper, so
  the timing is deterministic) and at timed points of an unpatched save loop; resume must then pick a complete,
  loadable checkpoint, and the next save must clear what the killed one left.
"""
from __future__ import annotations

import dataclasses
import json
import math
import multiprocessing
import os
import shutil
import signal
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import tether.checkpoint as checkpoint
import tether.stages.dpo as dpo
import tether.stages.dpo.pairs as dpo_pairs
import tether.stages.lm as lm
import tether.stages.online.algorithms as online_algorithms
import tether.stages.rm as rm
import tether.training as training
from tether.checkpoint import (
    COMPLETE,
    complete_checkpoints,
    latest_checkpoint,
    load_trainer_state,
    save_checkpoint,
)
from tether.config import validate_config
from tether.data.preferences import Comparison, write_comparisons
from tether.data.sft_data import read_conversations
from tether.errors import ConfigError, NonFiniteError
from tether.guard import (
    NonFiniteGuard,
    check_finite,
    nonfinite_parts,
    nonfinite_tensors,
)
from tether.models import build_model, load_policy, save_pretrained
from tether.reward import RewardModel
from tether.stages import online
from tether.stages.ppo import PPOConfig
from tether.chat import chat_format

NAN = float("nan")


# ---------------------------------------------------------------------------------------------
# 1. The guard on its own


def test_nonfinite_parts_names_what_was_not_finite():
    assert nonfinite_parts(0.5, 2.0) == []
    assert nonfinite_parts(NAN, 2.0) == ["loss nan"]
    assert nonfinite_parts(0.5, math.inf) == ["gradient norm inf"]
    assert nonfinite_parts(-math.inf, NAN) == ["loss -inf", "gradient norm nan"]


def test_nonfinite_tensors_walks_nested_states_and_ignores_integers():
    state = {"a": torch.ones(3), "opt": {"state": {0: {"exp_avg": torch.tensor([1.0, math.inf])}}},
             "rng": (torch.zeros(4, dtype=torch.uint8), [torch.tensor([NAN])]), "step": 3}
    assert nonfinite_tensors(state) == ["opt.state.0.exp_avg", "rng.1.0"]
    assert nonfinite_tensors({"ids": torch.arange(3)}) == []


def _linear_step(guard: NonFiniteGuard, lin, opt, loss_scale: float) -> tuple[float, int]:
    loss = (lin(torch.ones(1, 2)).sum() * loss_scale)
    loss.backward()
    return guard.apply(opt, lin.parameters(), 1.0, 0.1, float(loss.detach()))


def test_guard_skips_without_touching_weights_or_adam_state_then_applies():
    torch.manual_seed(0)
    lin = torch.nn.Linear(2, 1)
    opt = torch.optim.AdamW(lin.parameters(), lr=0.1)
    guard = NonFiniteGuard("skip", max_skips=3)
    before = [p.detach().clone() for p in lin.parameters()]
    grad_norm, skipped = _linear_step(guard, lin, opt, NAN)
    assert skipped == 1 and math.isnan(grad_norm)
    assert all(torch.equal(a, p) for a, p in zip(before, lin.parameters()))
    assert all(p.grad is None for p in lin.parameters()) and not opt.state  # no moments, no step count
    _, skipped = _linear_step(guard, lin, opt, 1.0)
    assert skipped == 0 and guard.consecutive == 0
    assert not torch.equal(before[0], lin.weight) and torch.isfinite(lin.weight).all()


def test_guard_halts_naming_the_step_and_after_too_many_consecutive_skips():
    lin = torch.nn.Linear(2, 1)
    opt = torch.optim.AdamW(lin.parameters(), lr=0.1)
    # Resumed at step 4, two optimizer updates per step: the 3rd update is step 5's first.
    guard = NonFiniteGuard("halt", start_step=4, updates_per_step=2)
    _linear_step(guard, lin, opt, 1.0)
    _linear_step(guard, lin, opt, 1.0)
    with pytest.raises(NonFiniteError, match=r"step 6 \(optimizer update 1 of 2\): non-finite loss nan.*halt"):
        _linear_step(guard, lin, opt, NAN)
    guard = NonFiniteGuard("skip", max_skips=2)
    _linear_step(guard, lin, opt, NAN)
    _linear_step(guard, lin, opt, 1.0)  # an applied update resets the run of skips
    _linear_step(guard, lin, opt, NAN)
    with pytest.raises(NonFiniteError, match=r"step 4: .*2 optimizer updates in a row \(max_nonfinite_skips=2\)"):
        _linear_step(guard, lin, opt, math.inf)


def test_config_fields_are_validated():
    with pytest.raises(ConfigError, match="nonfinite"):
        training.TrainConfig(nonfinite="ignore").validate()
    with pytest.raises(ConfigError, match="max_nonfinite_skips"):
        training.TrainConfig(max_nonfinite_skips=0).validate()
    with pytest.raises(ConfigError, match="nonfinite"):
        PPOConfig(nonfinite="ignore").validate()


# ---------------------------------------------------------------------------------------------
# 2. The save guard


def _poisoned(model, value=NAN):
    with torch.no_grad():
        model.model.layers[1].mlp.up_proj.weight[0, 0] = value
    return model


def test_every_save_refuses_non_finite_weights(tokenizer, new_model, tmp_path):
    run = tmp_path / "run"
    good = new_model()
    save_checkpoint(run, 1, good, tokenizer, {"step": 1})
    with pytest.raises(NonFiniteError, match=r"checkpoint step 2: NaN or inf in model\.model\.layers\.1\.mlp\.up_proj"):
        save_checkpoint(run, 2, _poisoned(new_model()), tokenizer, {"step": 2})
    with pytest.raises(NonFiniteError, match=r"trainer_state\.optimizer\.exp_avg"):
        save_checkpoint(run, 2, good, tokenizer, {"step": 2, "optimizer": {"exp_avg": torch.tensor([math.inf])}})
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["step-000001"]  # nothing else written
    with pytest.raises(NonFiniteError, match="up_proj"):
        save_pretrained(_poisoned(new_model(), math.inf), tokenizer, str(tmp_path / "model"))
    assert not (tmp_path / "model").exists()
    reward = RewardModel(new_model(), tokenizer)
    with torch.no_grad():
        reward.head.weight[0, 3] = NAN
    with pytest.raises(NonFiniteError, match=r"backbone\.score\.weight"):
        reward.save_pretrained(tmp_path / "rm")
    assert not (tmp_path / "rm").exists()
    with pytest.raises(NonFiniteError, match="the value model"):
        check_finite({"head.weight": torch.tensor([NAN])}, "the value model")


# ---------------------------------------------------------------------------------------------
# 3. NaN injection into real runs


class Poison:
    """Makes the loss NaN during training step `at` (1-based; with `onwards`, every step from it) and records,
    for every poisoned step, whether any trained parameter changed across it."""

    def __init__(self, at: int, onwards: bool = False):
        self.at, self.onwards, self.calls, self.active, self.unchanged = at, onwards, 0, False, []

    def step(self, real, optimizer_arg: int):
        """A wrapper of a stage's train_step (or online update) that poisons step `at`."""
        def wrapped(*args, **kwargs):
            self.calls += 1
            self.active = self.calls == self.at or (self.onwards and self.calls > self.at)
            params = [p for g in args[optimizer_arg].param_groups for p in g["params"]]
            before = [p.detach().clone() for p in params]
            try:
                return real(*args, **kwargs)
            finally:
                if self.active:
                    self.unchanged.append(all(torch.equal(b, p) for b, p in zip(before, params)))
                self.active = False
        return wrapped

    def loss(self, real, pick=lambda out: out, put=lambda out, x: x):
        """A wrapper of a loss function multiplying its loss by NaN while a poisoned step runs (the graph is kept,
        so the backward pass makes NaN gradients too)."""
        def wrapped(*args, **kwargs):
            out = real(*args, **kwargs)
            return put(out, pick(out) * NAN) if self.active else out
        return wrapped


def _finite_folder(folder: Path) -> None:
    for file in folder.glob("*.safetensors"):
        for name, tensor in load_file(str(file)).items():
            assert torch.isfinite(tensor).all(), (file, name)


def _rows(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def _check_skip(run: Path, poison: Poison, skips_per_step: int = 1) -> None:
    """Skip policy, NaN at step 2 of 4, checkpoint at step 2: the run finished, step 2 counted, weights finite."""
    assert poison.unchanged == [True]
    rows = {r["step"]: r for r in _rows(run) if r.get("step")}
    assert [rows[s]["nonfinite_skips"] for s in (1, 2, 3, 4)] == [0, skips_per_step, 0, 0]
    assert math.isnan(rows[2]["loss"]) and math.isfinite(rows[4]["loss"])
    for folder in [run / "model", *complete_checkpoints(run)]:
        _finite_folder(folder)
    assert latest_checkpoint(run).name == "step-000002"


def _check_halt(run: Path, poison: Poison, load) -> None:
    """Halt policy, NaN at step 3: step 2's checkpoint is the newest, loads, is finite; no final model."""
    assert poison.unchanged == [True]
    assert latest_checkpoint(run).name == "step-000002" and not (run / "model").exists()
    load(latest_checkpoint(run))
    _finite_folder(latest_checkpoint(run))


@pytest.fixture(scope="module")
def sft_examples(world_dir, tokenizer):
    chats = chat_format(tokenizer).encode_many([(c, None) for c in read_conversations(world_dir / "sft.jsonl")])
    return [training.Example(c.input_ids, c.loss_mask) for c in chats]


def _sft(monkeypatch, tmp_path, tokenizer, new_model, examples, policy: str, poison: Poison) -> Path:
    monkeypatch.setattr(lm, "train_step", poison.step(lm.train_step, 1))
    monkeypatch.setattr(lm, "batch_loss", poison.loss(lm.batch_loss, lambda o: o[0], lambda o, x: (x, o[1])))
    cfg = training.TrainConfig(out=str(tmp_path / "sft"), max_steps=4, batch_size=4, micro_batch_size=2, lr=1e-2,
                         warmup_steps=1, eval_fraction=0.0, save_every=2, log_every=1, nonfinite=policy)
    cfg.validate()
    lm.train_lm(cfg, new_model(), tokenizer, examples, "sft")
    return Path(cfg.out)


def test_sft_skip(monkeypatch, tmp_path, tokenizer, new_model, sft_examples):
    poison = Poison(2)
    run = _sft(monkeypatch, tmp_path, tokenizer, new_model, sft_examples, "skip", poison)
    _check_skip(run, poison)
    # AdamW took 3 steps, not 4: the skipped one left its step count and moments alone.
    state = load_trainer_state(latest_checkpoint(run))["optimizer"]["state"]
    assert {int(s["step"]) for s in state.values()} == {1}


def test_sft_halt(monkeypatch, tmp_path, tokenizer, new_model, sft_examples):
    poison = Poison(3)
    with pytest.raises(NonFiniteError, match=r"step 3: non-finite loss nan and gradient norm nan \(nonfinite=halt\)"):
        _sft(monkeypatch, tmp_path, tokenizer, new_model, sft_examples, "halt", poison)
    _check_halt(tmp_path / "sft", poison, load_policy)


@pytest.fixture(scope="module")
def prefs(tmp_path_factory) -> Path:
    """24 labelled comparisons over 8 prompts (a good answer and a refusal), for RM and DPO."""
    comparisons = []
    for i in range(24):
        good, bad = f"The capital of land {i % 8} is Osk {i % 8}.", "I do not know." + " Sorry." * (i % 3)
        a, b, choice = (good, bad, "A") if i % 2 == 0 else (bad, good, "B")
        comparisons.append(Comparison(f"What is the capital of land {i % 8}?", a, b, choice))
    path = tmp_path_factory.mktemp("prefs") / "prefs.jsonl"
    write_comparisons(path, comparisons)
    return path


@pytest.mark.parametrize("policy", ["skip", "halt"])
def test_rm(monkeypatch, tmp_path, prefs, model_dir, policy):
    poison = Poison(2 if policy == "skip" else 3)
    monkeypatch.setattr(rm, "train_step", poison.step(rm.train_step, 1))
    monkeypatch.setattr(rm, "bradley_terry_loss", poison.loss(rm.bradley_terry_loss))
    cfg = rm.RMConfig(data=str(prefs), model=str(model_dir), out=str(tmp_path / "rm"), max_steps=4, batch_size=4,
                      micro_batch_size=2, lr=1e-2, warmup_steps=1, eval_fraction=0.25, eval_every=0, save_every=2,
                      log_every=1, max_length=64, nonfinite=policy)
    cfg.validate()
    if policy == "skip":
        rm.run(cfg)
        _check_skip(Path(cfg.out), poison)
        assert torch.isfinite(RewardModel.from_pretrained(Path(cfg.out) / "model").head.weight).all()
    else:
        with pytest.raises(NonFiniteError, match=r"step 3: non-finite loss nan"):
            rm.run(cfg)
        _check_halt(Path(cfg.out), poison, RewardModel.from_pretrained)


@pytest.mark.parametrize("policy", ["skip", "halt"])
def test_dpo(monkeypatch, tmp_path, prefs, model_dir, policy):
    poison = Poison(2 if policy == "skip" else 3)
    monkeypatch.setattr(dpo_pairs, "train_step", poison.step(dpo_pairs.train_step, 1))
    monkeypatch.setattr(dpo_pairs, "pair_losses", poison.loss(dpo_pairs.pair_losses))
    cfg = dpo.DPOConfig(data=str(prefs), model=str(model_dir), out=str(tmp_path / "dpo"), max_steps=4, batch_size=4,
                        micro_batch_size=2, lr=1e-2, warmup_steps=1, eval_fraction=0.25, eval_every=0, save_every=2,
                        log_every=1, max_length=64, nonfinite=policy)
    cfg.validate()
    if policy == "skip":
        dpo.run(cfg)
        _check_skip(Path(cfg.out), poison)
    else:
        with pytest.raises(NonFiniteError, match=r"step 3: non-finite loss nan"):
            dpo.run(cfg)
        _check_halt(Path(cfg.out), poison, load_policy)


def _ppo(monkeypatch, tmp_path, world_dir, model_dir, policy: str, poison: Poison, **kw) -> PPOConfig:
    monkeypatch.setattr(online, "update", poison.step(online.update, 2))
    algo = online_algorithms.ALGORITHMS["ppo"]
    poisoned = poison.loss(algo.loss, lambda o: o[0], lambda o, x: (x, o[1]))
    monkeypatch.setitem(online_algorithms.ALGORITHMS, "ppo", dataclasses.replace(algo, loss=poisoned))
    # N = 4 samples, one minibatch, ppo_epochs = 2: two optimizer updates per step.
    cfg = PPOConfig(model=str(model_dir), prompts=str(world_dir / "prompts.jsonl"), reward="gold",
                    world=str(world_dir), max_new_tokens=6, rollout_batch=4, minibatch_size=4, micro_batch_size=2,
                    ppo_epochs=2, max_steps=4, lr=3e-3, eval_every=0, eval_prompts=0, sample_every=0, save_every=2,
                    out=str(tmp_path / "ppo"), nonfinite=policy, **kw)
    cfg.validate()
    return cfg


def test_ppo_skip(monkeypatch, tmp_path, world_dir, model_dir):
    poison = Poison(2)
    cfg = _ppo(monkeypatch, tmp_path, world_dir, model_dir, "skip", poison)
    online.train_online(cfg)
    _check_skip(Path(cfg.out), poison, skips_per_step=2)  # both updates of step 2; policy and value head unchanged
    assert "value" in load_trainer_state(latest_checkpoint(Path(cfg.out)))


def test_ppo_halt_and_a_diverging_run_stops(monkeypatch, tmp_path, world_dir, model_dir):
    poison = Poison(3)
    cfg = _ppo(monkeypatch, tmp_path, world_dir, model_dir, "halt", poison)
    with pytest.raises(NonFiniteError, match=r"step 3 \(optimizer update 1 of 2\): non-finite loss nan"):
        online.train_online(cfg)
    _check_halt(Path(cfg.out), poison, load_policy)
    # Skip, but NaN from step 3 on: the second consecutive skip (max_nonfinite_skips=2) halts in step 3.
    shutil.rmtree(cfg.out)
    poison = Poison(3, onwards=True)
    cfg = _ppo(monkeypatch, tmp_path, world_dir, model_dir, "skip", poison, max_nonfinite_skips=2)
    with pytest.raises(NonFiniteError, match=r"step 3 \(optimizer update 2 of 2\).*2 optimizer updates in a row"):
        online.train_online(cfg)
    _check_halt(Path(cfg.out), poison, load_policy)


# ---------------------------------------------------------------------------------------------
# 4. kill -9 during checkpoint writes

PHASES = {
    # A state file half written: the temporary folder exists, holds a truncated file, has no marker.
    "writing": lambda: setattr(torch, "save", _half_save),
    # Every file written and fsynced, not yet renamed.
    "fsynced": lambda: setattr(checkpoint, "_fsync_tree", _then_block(checkpoint._fsync_tree)),
    # Renamed to step-000003, the marker not yet written.
    "renamed": lambda: setattr(checkpoint, "_write_marker", _then_block(lambda *a: None)),
    # step-000003 complete; pruning step-000001 has deleted its marker and weights, not the rest.
    "pruning": lambda: setattr(shutil, "rmtree", _half_rmtree),
}
SIGNAL = "reached"  # the file a writer creates (beside its run folder) when it reaches the point to be killed at


def _block() -> None:
    Path(os.environ["TETHER_TEST_SIGNAL"]).touch()
    time.sleep(600)


def _then_block(real):
    def wrapped(*args, **kwargs):
        real(*args, **kwargs)
        _block()
    return wrapped


def _half_save(obj, path):
    Path(path).write_bytes(b"PK\x03\x04 truncated by kill -9")
    _block()


def _half_rmtree(path, *args, **kwargs):
    (Path(path) / "model.safetensors").unlink(missing_ok=True)
    _block()


def _save(run: Path, step: int, model, tokenizer) -> None:
    """A checkpoint whose every weight equals its step, so a mixed-up folder shows on loading."""
    with torch.no_grad():
        for p in model.parameters():
            p.fill_(float(step))
    save_checkpoint(run, step, model, tokenizer, {"step": step, "w": torch.full((8,), float(step))}, keep=2)


def _writer(run: Path, tokenizer, phase: str) -> None:
    """The forked writer: two complete checkpoints, then step 3 killed at `phase` (or, for "loop", saves of steps
    3, 4, ... until killed, unpatched)."""
    os.environ["TETHER_TEST_SIGNAL"] = str(run.parent / SIGNAL)
    model = build_model("test", tokenizer)
    _save(run, 1, model, tokenizer)
    _save(run, 2, model, tokenizer)
    if phase == "loop":
        Path(os.environ["TETHER_TEST_SIGNAL"]).touch()
        for step in range(3, 10_000):
            _save(run, step, model, tokenizer)
    PHASES[phase]()
    _save(run, 3, model, tokenizer)


def _kill_when_reached(proc, signal_file: Path, then=None) -> None:
    deadline = time.monotonic() + 120
    while not signal_file.exists():
        assert proc.is_alive(), f"writer exited with {proc.exitcode} before reaching its kill point"
        assert time.monotonic() < deadline, "writer never reached its kill point"
        time.sleep(0.002)
    if then is not None:
        then()
    os.kill(proc.pid, signal.SIGKILL)
    proc.join(30)
    assert proc.exitcode == -signal.SIGKILL


def _wait_for_tmp(root: Path, delay: float):
    def wait():
        deadline = time.monotonic() + 60
        while not any(p.name.startswith(checkpoint.TMP_PREFIX) for p in root.iterdir()):
            assert time.monotonic() < deadline
        time.sleep(delay)
    return wait


def _assert_resumable(run: Path) -> Path:
    """Every checkpoint resume could choose is whole: weights, trainer state and its step agree."""
    latest = latest_checkpoint(run)
    assert latest is not None and latest == complete_checkpoints(run)[-1]
    for ckpt in complete_checkpoints(run):
        step = int(ckpt.name.removeprefix("step-"))
        assert all(torch.all(w == step) for w in load_file(str(ckpt / "model.safetensors")).values()), ckpt
        assert load_trainer_state(ckpt)["step"] == step
    model = load_policy(str(latest))  # plain transformers loads it
    assert all(torch.all(p == int(latest.name.removeprefix("step-"))) for p in model.parameters())
    return latest


LOOP_DELAYS = (0.0, 0.004, 0.02, 0.06)


def test_kill_9_mid_save_leaves_a_loadable_checkpoint_and_the_next_save_cleans_up(tokenizer, tmp_path):
    fork = multiprocessing.get_context("fork")  # a real process, killed by a real SIGKILL; no re-import cost
    cases = [(phase, None) for phase in PHASES] + [("loop", d) for d in LOOP_DELAYS]
    procs = []
    for i, (phase, _) in enumerate(cases):
        run = tmp_path / f"case{i}" / "run"
        run.mkdir(parents=True)
        proc = fork.Process(target=_writer, args=(run, tokenizer, phase), daemon=True)
        proc.start()
        procs.append(proc)
    for i, ((phase, delay), proc) in enumerate(zip(cases, procs)):
        run = tmp_path / f"case{i}" / "run"
        _kill_when_reached(proc, run.parent / SIGNAL, _wait_for_tmp(run / "checkpoints", delay) if phase == "loop"
                           else None)
        names = sorted(p.name for p in (run / "checkpoints").iterdir())
        latest = _assert_resumable(run)
        if phase == "writing" or phase == "fsynced":
            assert names == [".tmp-step-000003", "step-000001", "step-000002"] and latest.name == "step-000002"
        elif phase == "renamed":
            assert names == ["step-000001", "step-000002", "step-000003"] and latest.name == "step-000002"
            assert not (run / "checkpoints" / "step-000003" / COMPLETE).exists()
        elif phase == "pruning":
            assert names == ["step-000001", "step-000002", "step-000003"] and latest.name == "step-000003"
            assert [p.name for p in complete_checkpoints(run)] == ["step-000002", "step-000003"]
        # The next save clears the leftovers and becomes the newest checkpoint.
        _save(run, 10_000, build_model("test", tokenizer), tokenizer)
        left = sorted(p.name for p in (run / "checkpoints").iterdir())
        assert all((run / "checkpoints" / name / COMPLETE).exists() for name in left), (phase, delay, left)
        assert len(left) == 2 and _assert_resumable(run).name == "step-010000"


def test_keep_checkpoints_prunes_to_the_newest_or_keeps_all(tmp_path, tokenizer, new_model):
    model = new_model()
    for keep, expected in ((2, [2, 3]), (0, [1, 2, 3])):
        run = tmp_path / f"keep{keep}"
        for step in (1, 2, 3):
            save_checkpoint(run, step, model, tokenizer, {"step": step}, keep=keep)
        assert [int(p.name.split("-")[1]) for p in complete_checkpoints(run)] == expected


def test_keep_checkpoints_is_validated():
    with pytest.raises(ConfigError, match="keep_checkpoints"):
        validate_config(training.TrainConfig(keep_checkpoints=-1))
    with pytest.raises(ConfigError, match="keep_checkpoints"):
        validate_config(PPOConfig(keep_checkpoints=-1))
