"""tether.distributed: training under torchrun equals training in one process.

The acceptance test of issue 8: one torchrun of 2 CPU processes (gloo, `tests/distkit.py`) runs SFT, RM, DPO,
KTO, PPO, GRPO (also with scale_rewards=batch, loss_type=dapo, epsilon_high and kl_coef=0) and RLOO (its sequence
ratio) on the "test" preset with DDP, SFT and DPO with LoRA and DDP, SFT with compiled layers (torch_compile) and
DDP, and SFT, RM and DPO with FSDP2;
each run is compared with the same config run in this process, where a rank's micro-batches become more
accumulation steps (2 ranks x accumulation A against 1 process x 2A). PPO, LoRA SFT and FSDP2 DPO also
checkpoint activations on the ranks.

Measured on this CPU (torch 2.13): per-step losses agree to a relative 2e-6 (GRPO; SFT 2e-8), other metrics to
1e-5 (an RM mean score near 0), final weights to 4e-6 (PPO), after 2-4 optimizer steps at large learning rates.
Asserted: losses within a relative 1e-5, other metrics 1e-4 (or 1e-5 absolute), weights within 2e-5. The
differences are float rounding: the ranks sum gradients in another order and pad their batches to other widths.

Also: only rank 0 writes files (a LoRA checkpoint holds the adapter only); an FSDP2 run resumes from its
checkpoint step for step; the pure pieces (the micro-batch share of a rank, whitening over ranks, per-row
sampling noise) and the config checks (LoRA with FSDP2 is refused).
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from tether import distributed
from tether.math.advantages import explained_variance, masked_var, masked_whiten
from tether.cli import UsageError, _dispatch
from tether.config import load_config
from tether.errors import ConfigError
from tether.lora import ADAPTER_FOLDER, ADAPTER_WEIGHTS, LoraOptions
from tether.monitor import MonitorConfig
from tether.rollout import row_noise, sample
from tether.stages.dpo import DPOConfig
from tether.stages.ppo import PPOConfig
from tether.stages.sft import SFTConfig

HERE = Path(__file__).parent
LOSS_REL, METRIC_REL, METRIC_ABS, WEIGHTS_ABS = 1e-5, 1e-4, 1e-5, 2e-5
# Token counts past a threshold: a token within rounding of the clip range may count on one side only.
NOT_COMPARED = {"tokens_per_s", "samples_per_s", "clipfrac", "clipfrac/low", "clipfrac/high", "vf_clipfrac"}
LORA = {"lora": {"r": 4, "alpha": 8.0}}  # DDP all-reduces the adapters' gradients only (the base is frozen)


def _prefs(path: Path) -> str:
    """24 labelled comparisons over 8 prompts (3 each), as in test_dpo.py."""
    rows = []
    for i in range(24):
        good, bad = f"The capital of land {i % 8} is Osk {i % 8}.", "I do not know." + " Sorry." * (i % 3)
        a, b = (good, bad) if i % 2 == 0 else (bad, good)
        rows.append({"prompt": f"What is the capital of land {i % 8}?", "response_a": a, "response_b": b,
                     "choice": "A" if i % 2 == 0 else "B", "rater": f"r{i % 2}"})
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def _configs(world_dir: Path, model_dir: Path, prefs: str) -> dict[str, tuple[str, dict]]:
    """name -> (stage, settings) of each compared run; a few steps each, learning rates that move the weights."""
    offline = dict(eval_every=0, log_every=1, save_every=2, warmup_steps=1, lr=1e-2, max_length=128, max_steps=3)
    sft = dict(data=str(world_dir / "sft.jsonl"), model=str(model_dir), batch_size=8, micro_batch_size=2,
               eval_fraction=0.1, **offline)
    rm = dict(data=prefs, model=str(model_dir), batch_size=8, micro_batch_size=2, eval_fraction=0.25, **offline)
    dpo = dict(data=prefs, model=str(model_dir), batch_size=4, micro_batch_size=1, eval_fraction=0.25, **offline)
    online = dict(model=str(model_dir), prompts=str(world_dir / "prompts.jsonl"), world=str(world_dir),
                  reward="callable", reward_fn="distkit:letters", max_new_tokens=6, ppo_epochs=2, max_steps=2,
                  lr=3e-3, eval_every=0, eval_prompts=0, sample_every=1, save_every=1)
    quiet = {"monitor": {"enabled": False}}
    return {
        "sft": ("sft", sft),
        "rm": ("rm", rm),
        "dpo": ("dpo", dpo),  # with the monitor (rank 0 samples, the stop decision is broadcast)
        "kto": ("dpo", {**dpo, "loss": "kto", **quiet}),
        "ppo": ("ppo", dict(online, rollout_batch=4, minibatch_size=2, micro_batch_size=1)),
        "grpo": ("grpo", dict(online, rollout_batch=2, group_size=4, minibatch_size=4, micro_batch_size=2)),
        # issue 20: the batch std over ranks, the token mean over the whole minibatch, no reference at all
        "grpo_options": ("grpo", dict(online, rollout_batch=2, group_size=4, minibatch_size=4, micro_batch_size=2,
                                      scale_rewards="batch", loss_type="dapo", epsilon_high=0.28, kl_coef=0.0)),
        "rloo": ("rloo", dict(online, rollout_batch=2, group_size=4, minibatch_size=4, micro_batch_size=2)),
        "sft_lora": ("sft", {**sft, **LORA}),
        "dpo_lora": ("dpo", {**dpo, **LORA}),  # the reference: the policy with adapters disabled, on every rank
        "sft_fsdp2": ("sft", {**sft, "strategy": "fsdp2"}),
        "sft_compile": ("sft", {**sft, "torch_compile": True}),  # each rank's decoder layers compiled, under DDP
        # Under FSDP2 each micro-batch is one pass of whole sequences (no length chunks, no shared prefixes): the
        # one-process run computes the same, since Adam turns float-order differences of near-zero gradients into
        # visible weight changes.
        "rm_fsdp2": ("rm", {**rm, "strategy": "fsdp2", "share_prefixes": False}),
        "dpo_fsdp2": ("dpo", {**dpo, "strategy": "fsdp2", **quiet}),
    }


def _write(path: Path, settings: dict) -> str:
    path.write_text(yaml.safe_dump(settings))
    return str(path)


def _torchrun(workdir: Path, jobs: list) -> subprocess.CompletedProcess:
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / "jobs.json").write_text(json.dumps(jobs))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(HERE.parent / "src"), str(HERE)]),
           "OMP_NUM_THREADS": "1", "TETHER_QUIET": "1", "HF_HUB_OFFLINE": "1"}
    # --standalone: a local rendezvous on a free port, so parallel test runs never collide on MASTER_PORT.
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
               str(HERE / "distkit.py"), str(workdir), str(workdir / "jobs.json")]
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=900)


@pytest.fixture(scope="module")
def runs(world_dir, model_dir, tmp_path_factory):
    """Every config run by 2 ranks (one torchrun) and by this process; then an FSDP2 SFT run resumed under torchrun."""
    root = tmp_path_factory.mktemp("distributed")
    configs = _configs(world_dir, model_dir, _prefs(root / "prefs.jsonl"))
    # eval at step 2, just before the checkpoint: an FSDP2 evaluation leaves the root unsharded (distributed._reshard)
    resume = {**configs["sft_fsdp2"][1], "max_steps": 4, "eval_every": 2, "resume": True, "out": str(root / "resumed")}
    # The ranks also recompute activations in these (gradient checkpointing must change nothing either).
    extra = {name: {"gradient_checkpointing": True} for name in ("ppo", "dpo_fsdp2", "sft_lora")}
    jobs = [[stage, _write(root / f"{name}.yaml", {**settings, **extra.get(name, {}), "out": f"two/{name}"})]
            for name, (stage, settings) in configs.items()]
    resumed = _write(root / "resumed.yaml", resume)  # absolute out: every rank must read rank 0's checkpoint
    jobs += [["sft", resumed], ["tag", str(root / "resumed" / "metrics.jsonl")], ["sft", resumed]]
    done = _torchrun(root / "work", jobs)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-6000:]
    for name, (stage, settings) in configs.items():
        assert _dispatch([stage, "--config", _write(root / f"one-{name}.yaml", {**settings, "out": str(root / "one" / name)})]) == 0
    assert _dispatch(["sft", "--config", _write(root / "one-sft4.yaml", {**resume, "resume": False,
                                                                           "out": str(root / "one" / "sft4")})]) == 0
    return root


def _metrics(folder: Path) -> list[dict]:
    return [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]


def _assert_same_run(one: Path, two: Path) -> None:
    a, b = _metrics(one), _metrics(two)
    assert [r["step"] for r in a] == [r["step"] for r in b] and a
    for ra, rb in zip(a, b):
        assert set(ra) == set(rb) - {"tagged"}
        assert rb["loss"] == pytest.approx(ra["loss"], rel=LOSS_REL), ra["step"]
        for name, value in ra.items():
            if name not in NOT_COMPARED and isinstance(value, (int, float)) and not isinstance(value, bool):
                assert rb[name] == pytest.approx(value, rel=METRIC_REL, abs=METRIC_ABS), (ra["step"], name)
            elif name not in NOT_COMPARED:
                assert rb[name] == value, (ra["step"], name)
    wa, wb = (load_file(str(f / "model" / "model.safetensors")) for f in (one, two))
    assert wa.keys() == wb.keys()
    assert max(float((wa[k] - wb[k]).abs().max()) for k in wa) <= WEIGHTS_ABS


@pytest.mark.parametrize("name", ["sft", "rm", "dpo", "kto", "ppo", "grpo", "grpo_options", "rloo", "sft_lora",
                                  "dpo_lora", "sft_fsdp2", "rm_fsdp2", "dpo_fsdp2", "sft_compile"])
def test_two_ranks_equal_one_process_with_twice_the_accumulation(runs, name):
    _assert_same_run(runs / "one" / name, runs / "work" / "rank0" / "two" / name)


def test_only_rank_0_writes(runs):
    written = [p for p in (runs / "work" / "rank1").rglob("*") if p.is_file()]
    assert written == []  # rank 1 ran every stage in its own folder, and left only the empty run folders
    two = runs / "work" / "rank0" / "two"
    assert (two / "sft" / "checkpoints" / "step-000002" / "COMPLETE").exists()
    assert (two / "rm" / "eval.json").exists() and (two / "dpo" / "ref_logps.safetensors").exists()
    assert (two / "ppo" / "value_model.safetensors").exists() and (two / "ppo" / "samples.jsonl").exists()
    assert (two / "sft_fsdp2" / "checkpoints" / "step-000002" / "trainer_state.pt").exists()
    lora = two / "sft_lora" / "checkpoints" / "step-000002"  # the adapter only, and the merged model at the end
    assert (lora / ADAPTER_WEIGHTS).exists() and not (lora / "model.safetensors").exists()
    assert (two / "sft_lora" / "model" / ADAPTER_FOLDER / ADAPTER_WEIGHTS).exists()


def test_fsdp2_run_resumes_from_its_checkpoint_step_for_step(runs):
    rows = _metrics(runs / "resumed")
    assert rows[0].get("tagged")  # the resumed run kept the lines up to its checkpoint (step 2): it resumed
    _assert_same_run(runs / "one" / "sft4", runs / "resumed")


# ---------------------------------------------------------------------------------------------
# The pure pieces


def test_a_rank_takes_every_wth_micro_batch_padded_with_weight_0_repeats(monkeypatch):
    monkeypatch.setattr(distributed, "world_size", lambda: 2)
    shares = []
    for r in (0, 1):
        monkeypatch.setattr(distributed, "rank", lambda r=r: r)
        shares.append(distributed.shard(["a", "b", "c", "d", "e"]))
    # ceil(5 / 2) = 3 each: rank 0 a, c, e; rank 1 b, d and a weight-0 repeat of a
    assert shares == [[("a", True), ("c", True), ("e", True)], [("b", True), ("d", True), ("a", False)]]
    loss = torch.tensor(6.0)
    assert float(distributed.normalised(loss, 12)) == 1.0  # 6 / (12 / 2): DDP's average over 2 ranks halves it
    assert float(distributed.normalised(loss, 12, real=False)) == 0.0


def _as_ranks(parts: list, fn):
    """fn(part, reduce) on each part in its own thread, `reduce` an all-reduce sum across the threads."""
    barrier, slots, out = threading.Barrier(len(parts)), [None] * len(parts), [None] * len(parts)

    def reduce_for(i):
        def reduce(t):
            slots[i] = t.clone()
            barrier.wait()
            total = sum(slots)
            barrier.wait()  # nobody overwrites a slot before everyone has summed
            return total
        return reduce

    def work(i):
        out[i] = fn(parts[i], reduce_for(i))

    threads = [threading.Thread(target=work, args=(i,)) for i in range(len(parts))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return out


def test_whitening_over_ranks_equals_whitening_the_concatenated_batch():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(7, 5, generator=g, dtype=torch.float64) * 3 + 10  # |mean| >> std: a one-pass variance would drift
    lengths = torch.tensor([5, 1, 3, 4, 2, 5, 1])
    mask = torch.arange(5)[None, :] < lengths[:, None]  # (7, 5) prefixes
    parts = [(x[:3], mask[:3]), (x[3:], mask[3:])]  # rank 0 holds 3 rows, rank 1 four
    for shift in (True, False):
        whitened = _as_ranks(parts, lambda p, reduce: masked_whiten(*p, shift_mean=shift, reduce=reduce))
        torch.testing.assert_close(torch.cat(whitened), masked_whiten(x, mask, shift_mean=shift), rtol=0, atol=1e-12)
    var = _as_ranks(parts, lambda p, reduce: masked_var(*p, reduce=reduce))  # unbiased: n is the global count
    assert all(float(v) == pytest.approx(float(masked_var(x, mask)), rel=1e-12) for v in var)
    returns = x.flip(0)
    ev = _as_ranks([(x[:3], returns[:3], mask[:3]), (x[3:], returns[3:], mask[3:])],
                   lambda p, reduce: explained_variance(*p, reduce=reduce))
    assert all(float(e) == pytest.approx(float(explained_variance(x, returns, mask)), rel=1e-12) for e in ev)


def test_per_row_noise_samples_the_same_tokens_however_the_rows_are_split(model_dir, tokenizer):
    from tether.models import load_policy
    from tether.chat import chat_format

    policy = load_policy(str(model_dir)).eval()
    prompts = chat_format(tokenizer).prompts_ids([f"What is the capital of land {i}?" for i in range(4)])
    noise = row_noise([11, 12, 13, 14], 8)  # (4, 8)
    kw = dict(max_new_tokens=8, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    whole = sample(policy, prompts, noise=noise, **kw)
    halves = [sample(policy, prompts[i:i + 2], noise=noise[i:i + 2], **kw) for i in (0, 2)]
    for i, half in enumerate(halves):
        rows = slice(2 * i, 2 * i + 2)
        r = half.response_ids.size(1)  # a half may stop earlier: all its rows ended
        assert torch.equal(half.response_ids, whole.response_ids[rows, :r])
        assert torch.equal(half.response_mask, whole.response_mask[rows, :r])
        torch.testing.assert_close(half.logprobs, whole.logprobs[rows, :r], rtol=0, atol=1e-5)
    assert torch.equal(row_noise([12], 8)[0], noise[1])  # a row's noise is its seed's, whatever its neighbours


# ---------------------------------------------------------------------------------------------
# Configs, device and the command line


def test_the_console_script_leaves_the_process_group_after_a_command_that_succeeded(tmp_path):
    from tether.cli import entry

    store = torch.distributed.FileStore(str(tmp_path / "store"), 1)
    for argv, left in ((["--version"], True), (["no-such-stage"], False)):
        torch.distributed.init_process_group("gloo", store=store, rank=0, world_size=1)
        try:
            assert entry(argv) == (0 if left else 2)
            # left together (barrier, destroy) after success; after a failure the other ranks may never reach the
            # barrier, so the group stays for setup's exit handler
            assert torch.distributed.is_initialized() is not left
        finally:
            if torch.distributed.is_initialized():
                torch.distributed.destroy_process_group()


def test_bf16_is_refused_on_the_cpu():
    with pytest.raises(ConfigError, match="bf16"):
        SFTConfig(bf16=True, device="cpu").validate()
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="bf16: autocast is for CUDA"):
            distributed.setup(SFTConfig(bf16=True))
        with pytest.raises(ConfigError, match="device: 'cuda'"):
            distributed.setup(SFTConfig(device="cuda"))
    assert distributed.setup(SFTConfig(device="cpu")) == torch.device("cpu")


def test_strategies_that_cannot_sample_are_refused():
    with pytest.raises(ConfigError, match="strategy"):
        PPOConfig(strategy="fsdp2").validate()
    with pytest.raises(ConfigError, match="strategy: fsdp2 cannot sample"):
        DPOConfig(strategy="fsdp2", kl_eval_prompts=4).validate()
    DPOConfig(strategy="fsdp2", monitor=MonitorConfig(enabled=False)).validate()  # nothing sampled: allowed


def test_lora_with_fsdp2_is_refused_naming_both_fields():
    with pytest.raises(ConfigError, match=r"SFTConfig.strategy: fsdp2 does not combine with LoRA \(lora.r > 0\)"):
        load_config(SFTConfig, overrides=["strategy=fsdp2", "lora.r=4"])
    with pytest.raises(ConfigError, match="strategy: fsdp2 does not combine with LoRA"):
        DPOConfig(strategy="fsdp2", lora=LoraOptions(r=4), monitor=MonitorConfig(enabled=False)).validate()
    load_config(SFTConfig, overrides=["strategy=ddp", "lora.r=4"])  # DDP: allowed (and tested above)


def test_stages_that_run_as_one_process_refuse_torchrun(monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(UsageError, match="stage 'collect' runs as one process"):
        _dispatch(["collect"])


def test_gradient_checkpointing_changes_no_loss_no_gradient_no_name(new_model, tokenizer, tmp_path):
    """No module or tensor name changes either: peft finds a LoRA model's adapters by module name (test_lora.py
    checks the memory saved, with LoRA)."""
    from tether.models import load_policy, save_pretrained
    from tether.stages.lm import batch_loss
    from tether.training import Example, collate

    batch = collate([Example(list(range(3, 3 + n)), [0] * 2 + [1] * (n - 2)) for n in (6, 9, 7)],
                    tokenizer.pad_token_id)
    plain, checkpointed = new_model(), new_model()
    distributed.checkpoint_layers(checkpointed)
    assert all("forward" in vars(layer) for layer in checkpointed.model.layers)  # each layer's own, checkpointed
    assert [n for n, _ in checkpointed.named_modules()] == [n for n, _ in plain.named_modules()]
    checkpointed.eval()  # DPO and online RL train in eval mode, where transformers' own checkpointing is off
    losses, grads = [], []
    for model in (plain, checkpointed):
        nll, _ = batch_loss(model, batch)
        nll.backward()
        losses.append(float(nll.detach()))
        grads.append(torch.cat([p.grad.reshape(-1) for p in model.parameters()]))
    assert losses[0] == losses[1]
    torch.testing.assert_close(grads[0], grads[1], rtol=0, atol=1e-6)
    save_pretrained(checkpointed, tokenizer, str(tmp_path / "m"))
    assert load_policy(str(tmp_path / "m")).state_dict().keys() == plain.state_dict().keys()
