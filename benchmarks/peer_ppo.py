"""TRL 1.9.0's `trl.experimental.ppo.PPOTrainer` on a prepared model folder, timed per PPO step: the peer side of
`bench_online.py --algo ppo`.

Runs in the `.peer19` venv (TRL 1.9.0, the last release with PPO; no tether), so it takes everything as paths:

    .peer19/bin/python benchmarks/peer_ppo.py --model DIR --prompts prompts.json --steps 12 --out trl.json

`--model` holds the Llama and its tokenizer (tether's chat template); `--prompts` is a JSON list of
{"text", "ids"} rows whose `ids` are the generation prompts as tether encodes them, fed to TRL as `input_ids`
(so both sides see the same token ids). Four models, as TRL's PPO requires: the policy, a reference copy, a
reward model and a value model (both `AutoModelForSequenceClassification`, num_labels=1, from the same folder: a
Llama backbone with an untrained score head).

One PPO step = one rollout batch of `--batch` prompts: `generate` (which also returns the logits: TRL takes the
old log-probs from them), reference, value and reward forwards, GAE, then num_ppo_epochs x num_mini_batches
optimizer steps. The JSON written to `--out` holds one record per PPO step (wall time at its end, episodes,
generated tokens up to and including EOS, prompt tokens, padded rows x columns of the rollout, seconds in
`generate` and in no-grad scoring forwards), versions and this process's peak RSS.
"""
from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")

import torch
import transformers
from datasets import Dataset
from peer_common import StepClock, write_result
from transformers import (
    AutoModelForCausalLM,
    AutoModelForSequenceClassification,
    AutoTokenizer,
)
from trl.experimental.ppo import PPOConfig, PPOTrainer
from trl.experimental.ppo import ppo_trainer as ppo_module


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", required=True)
    p.add_argument("--prompts", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--workdir", required=True, help="TRL's output_dir (nothing is saved there)")
    p.add_argument("--steps", type=int, default=12, help="PPO steps (rollout batches)")
    p.add_argument("--batch", type=int, default=16, help="prompts (episodes) per PPO step")
    p.add_argument("--new-tokens", type=int, default=32)
    p.add_argument("--ppo-epochs", type=int, default=4)
    args = p.parse_args()

    tokenizer = AutoTokenizer.from_pretrained(args.model)
    tokenizer.padding_side = "left"  # PPO's queries are left-padded (TRL's examples); the collator pads them
    rows = json.loads(Path(args.prompts).read_text())
    dataset = Dataset.from_list([{"input_ids": r["ids"]} for r in rows])

    def load(auto, **kw):
        return auto.from_pretrained(args.model, dtype=torch.float32, **kw)

    cfg = PPOConfig(
        output_dir=args.workdir, per_device_train_batch_size=args.batch, num_mini_batches=1,
        gradient_accumulation_steps=1, total_episodes=args.steps * args.batch, response_length=args.new_tokens,
        num_ppo_epochs=args.ppo_epochs, stop_token="eos", temperature=1.0, learning_rate=1e-5, seed=0,
        kl_coef=0.05, kl_estimator="k1", whiten_rewards=False, missing_eos_penalty=None,
        gradient_checkpointing=False,  # TRL's default is True; tether does not recompute activations
        bf16=False, fp16=False, use_cpu=True, num_sample_generations=0,
        save_strategy="no", report_to=[], disable_tqdm=True, logging_steps=1000,
    )
    trainer = PPOTrainer(args=cfg, processing_class=tokenizer, model=load(AutoModelForCausalLM),
                         ref_model=load(AutoModelForCausalLM),
                         reward_model=load(AutoModelForSequenceClassification, num_labels=1),
                         value_model=load(AutoModelForSequenceClassification, num_labels=1),
                         train_dataset=dataset)
    clock = StepClock()
    trainer.add_callback(clock)

    # Thin timers around the module-level functions the PPO loop calls by name (they only read the clock and
    # the tensors): generation, and the no-grad forwards of the experience (reference, value, reward).
    records: list[dict] = []
    current = {"generate_s": 0.0, "score_s": 0.0}
    eos, pad = tokenizer.eos_token_id, tokenizer.pad_token_id
    original_generation, original_forward, original_reward = (ppo_module.batch_generation, ppo_module.forward,
                                                              ppo_module.get_reward)

    def batch_generation(model, queries, *a, **kw):
        t, c = time.perf_counter(), time.process_time()
        query_responses, logits = original_generation(model, queries, *a, **kw)
        current["generate_s"] += time.perf_counter() - t
        current["generate_cpu"] = current.get("generate_cpu", 0.0) + time.process_time() - c
        response = query_responses[:, queries.size(1):]  # (B, R)
        is_eos = response == eos
        first = torch.where(is_eos.any(1), is_eos.int().argmax(1) + 1, response.size(1))  # tokens incl. EOS
        current.update(rows=int(queries.size(0)), generated_tokens=int(first.sum()),
                       prompt_tokens=int((queries != pad).sum()), padded_columns=int(query_responses.size(1)),
                       response_columns=int(response.size(1)), eos_rows=int(is_eos.any(1).sum()))
        return query_responses, logits

    def timed_nograd(fn):
        def wrapper(*a, **kw):
            if torch.is_grad_enabled():
                return fn(*a, **kw)
            t, c = time.perf_counter(), time.process_time()
            out = fn(*a, **kw)
            current["score_s"] += time.perf_counter() - t
            current["score_cpu"] = current.get("score_cpu", 0.0) + time.process_time() - c
            return out
        return wrapper

    ppo_module.batch_generation = batch_generation
    ppo_module.forward, ppo_module.get_reward = timed_nograd(original_forward), timed_nograd(original_reward)

    class Record(transformers.TrainerCallback):
        """Per step: the phase timers, and this process's CPU time at the step's end (`cpu`, from train start)."""

        def on_train_begin(self, *a, **kw):
            self.cpu_start = time.process_time()

        def on_step_end(self, *a, **kw):
            records.append({**current, "cpu": time.process_time() - self.cpu_start})
            current.update(generate_s=0.0, score_s=0.0, generate_cpu=0.0, score_cpu=0.0)

    trainer.add_callback(Record())
    trainer.train()

    steps = [{"step": i + 1, "time": clock.ends[i] - clock.start, **r} for i, r in enumerate(records)]
    result = {
        "side": "trl", "steps": steps,
        "work": ("generate with logits (old log-probs from generate's scores); no-grad forwards: reference, value "
                 "model, reward model; train: policy + value model forward/backward on the whole [prompt; response] "
                 "(logits at every position), one optimizer step per minibatch"),
    }
    write_result(args.out, result, cfg)


if __name__ == "__main__":
    main()
