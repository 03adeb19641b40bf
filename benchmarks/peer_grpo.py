"""TRL's GRPOTrainer or RLOOTrainer (current TRL) on a prepared model folder, timed per optimizer step: the peer side
of `bench_online.py --algo grpo` and `--algo rloo`.

Runs in the peer venv (`.peer`, TRL + transformers, no tether), so it takes everything as paths:

    .peer/bin/python benchmarks/peer_grpo.py --algorithm grpo|rloo --model DIR --prompts prompts.json --steps 10 \
        --out trl.json --workdir DIR [--device cpu|cuda]

`--prompts` is a JSON list of {"text", "ids"} rows: TRL gets the texts as conversational prompts and applies the
model folder's chat template (tether's) itself; `ids` (tether's encoding) are only used to check that TRL fed the
model the same prompt ids. The reward is `online_reward.trl_length_reward`, the same function tether calls.

One step = one optimizer step over `--prompts-per-step` x `--generations` completions, generated in one `generate`
call (generation_batch_size) and trained in micro-batches of `--micro-batch` accumulated into the step. The JSON
written to `--out` holds one record per step (wall time at its end, completions, generated tokens up to and
including EOS, prompt tokens, seconds in `generate` and in no-grad log-prob forwards), versions and peak RSS.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import online_reward
import torch
import transformers
import trl
from datasets import Dataset
from peer_common import StepClock, write_result
from transformers import AutoModelForCausalLM, AutoTokenizer


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--algorithm", choices=["grpo", "rloo"], required=True)
    p.add_argument("--model", required=True)
    p.add_argument("--prompts", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--workdir", required=True, help="TRL's output_dir (nothing is saved there)")
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--prompts-per-step", type=int, default=16)
    p.add_argument("--generations", type=int, default=4)
    p.add_argument("--micro-batch", type=int, default=16, help="completions per forward/backward")
    p.add_argument("--new-tokens", type=int, default=32)
    p.add_argument("--beta", type=float, required=True)
    p.add_argument("--device", choices=["cpu", "cuda"], default="cpu",
                   help="cuda: bf16 autocast over fp32 weights (TRL's bf16=True), as tether's bf16=true")
    args = p.parse_args()

    rows = json.loads(Path(args.prompts).read_text())
    expected = {tuple(r["ids"]) for r in rows}
    dataset = Dataset.from_list([{"prompt": [{"role": "user", "content": r["text"]}]} for r in rows])
    tokenizer = AutoTokenizer.from_pretrained(args.model)
    model = AutoModelForCausalLM.from_pretrained(args.model, dtype=torch.float32)
    completions = args.prompts_per_step * args.generations
    accumulation = completions // args.micro_batch
    common = {
        "output_dir": args.workdir, "per_device_train_batch_size": args.micro_batch,
        "gradient_accumulation_steps": accumulation,  # steps_per_generation defaults to this: one generate per step
        "num_generations": args.generations, "max_completion_length": args.new_tokens, "max_steps": args.steps,
        "beta": args.beta, "temperature": 1.0, "top_p": 1.0, "learning_rate": 1e-5, "seed": 0, "num_iterations": 1,
        "gradient_checkpointing": False,  # TRL's default is True; tether does not recompute activations
        "bf16": args.device == "cuda", "fp16": False, "use_cpu": args.device == "cpu", "save_strategy": "no",
        "report_to": [], "disable_tqdm": True,
        "logging_steps": 1000,
    }
    if args.algorithm == "grpo":
        # loss_type "grpo" averages per sequence, as tether's grpo loss ("sequence"); TRL's default is "dapo"
        cfg = trl.GRPOConfig(**common, loss_type="grpo", scale_rewards="group")
        trainer_cls = trl.GRPOTrainer
    else:
        cfg = trl.RLOOConfig(**common, normalize_advantages=False)
        trainer_cls = trl.RLOOTrainer

    records: list[dict] = []
    current = {"generate_s": 0.0, "score_s": 0.0, "reward_s": 0.0, "generated_tokens": 0, "rows": 0,
               "prompt_tokens": 0, "eos_rows": 0, "prompt_mismatches": 0}
    eos = tokenizer.eos_token_id

    def reward(completions, completion_ids=None, **kw):
        t, c = time.perf_counter(), time.process_time()
        out = online_reward.trl_length_reward(completions, **kw)
        current["reward_s"] += time.perf_counter() - t
        current["reward_cpu"] = current.get("reward_cpu", 0.0) + time.process_time() - c
        current["generated_tokens"] += sum(len(c) for c in completion_ids)  # cut after the first EOS, EOS kept
        current["eos_rows"] += sum(1 for c in completion_ids if c and c[-1] == eos)
        current["rows"] += len(completion_ids)
        return out

    reward.__name__ = "length_reward"
    trainer = trainer_cls(model=model, reward_funcs=[reward], args=cfg, train_dataset=dataset,
                          processing_class=tokenizer)
    clock = StepClock()
    trainer.add_callback(clock)

    # Thin timers (they only read the clock and their arguments): generate, and the no-grad log-prob forwards.
    original_generate = model.generate

    def generate(*a, **kw):
        ids, mask = kw["input_ids"], kw["attention_mask"]
        current["prompt_tokens"] += int(mask.sum())
        current["prompt_mismatches"] += sum(tuple(r[m.bool()].tolist()) not in expected for r, m in zip(ids, mask))
        current["padded_columns"] = int(ids.size(1)) + args.new_tokens
        t, c = time.perf_counter(), time.process_time()
        out = original_generate(*a, **kw)
        current["generate_s"] += time.perf_counter() - t
        current["generate_cpu"] = current.get("generate_cpu", 0.0) + time.process_time() - c
        current["response_columns"] = int(out.size(1) - ids.size(1))
        return out

    model.generate = generate
    original_logps = trainer._get_per_token_logps_and_entropies

    def logps(*a, **kw):
        if torch.is_grad_enabled():
            return original_logps(*a, **kw)
        t, c = time.perf_counter(), time.process_time()
        out = original_logps(*a, **kw)
        current["score_s"] += time.perf_counter() - t
        current["score_cpu"] = current.get("score_cpu", 0.0) + time.process_time() - c
        return out

    trainer._get_per_token_logps_and_entropies = logps

    class Record(transformers.TrainerCallback):
        """Per step: the phase timers and counts, and this process's CPU time at the step's end (`cpu`)."""

        def on_train_begin(self, *a, **kw):
            self.cpu_start = time.process_time()

        def on_step_end(self, *a, **kw):
            records.append({**current, "cpu": time.process_time() - self.cpu_start})
            current.update({k: 0.0 if k.endswith(("_s", "_cpu")) else 0 for k in current
                            if k not in ("padded_columns", "response_columns")})

    trainer.add_callback(Record())
    trainer.train()

    steps = [{"step": i + 1, "time": clock.ends[i] - clock.start, **r} for i, r in enumerate(records)]
    old = "an old-policy forward" if args.algorithm == "rloo" else "no old-policy forward (on-policy: ratio 1)"
    result = {
        "side": "trl", "steps": steps,
        "work": (f"generate; no-grad forwards: reference (beta {args.beta}), {old}; train: policy forward/backward "
                 f"in micro-batches of {args.micro_batch}, logits of the completion positions only"),
        "trainer": trainer_cls.__name__, "loss_type": getattr(cfg, "loss_type", None),
    }
    write_result(args.out, result, cfg)


if __name__ == "__main__":
    main()
