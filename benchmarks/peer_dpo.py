"""TRL's DPOTrainer on a prepared model folder, timed per optimizer step: the peer side of bench_dpo.py.

Runs in the peer venv (`.peer`, TRL + transformers, no tether), so it takes everything as paths:

    .peer/bin/python benchmarks/peer_dpo.py --model DIR --data trl.jsonl --steps 40 --out trl.json [--precompute]

`--model` holds the Llama and its tokenizer; `--data` is TRL preference JSONL (conversational:
`{"prompt": [user msg], "chosen": [assistant msg], "rejected": [assistant msg]}`). Without `--precompute`,
TRL's default runs: a second copy of the model is loaded as the reference and every step runs a no-grad
reference forward beside the policy's forward and backward. With `--precompute`
(`precompute_ref_log_probs=True`) the reference log-probs of the whole dataset are computed once in the
trainer's constructor (timed here as `precompute_s`) and no reference model is kept.

The JSON written to `--out` holds one record per optimizer step (wall time at the step's end, pairs, non-pad
tokens, padded tokens, loss tokens), the totals of the tokenised dataset (to check both sides train on the
same ids), versions, and this process's peak RSS.
"""
from __future__ import annotations

import argparse
import json
import time
from typing import ClassVar

import torch
from datasets import Dataset
from peer_common import StepClock, write_result
from transformers import AutoModelForCausalLM, AutoTokenizer
from trl import DPOConfig, DPOTrainer


class CountingDPOTrainer(DPOTrainer):
    """DPOTrainer that records what each micro-batch holds and how long the reference precompute took;
    nothing about the step is changed."""

    batches: list[dict]  # set before train()
    precompute_s: ClassVar[float] = 0.0  # set inside DPOTrainer.__init__, so on the class
    keep_length: ClassVar[bool] = False

    def _set_signature_columns_if_needed(self):
        # group_by_length reads a `length` column; DPO's fixed signature would drop it before the sampler sees it
        # (its collator ignores the extra key)
        super()._set_signature_columns_if_needed()
        if self.keep_length and "length" not in self._signature_columns:
            self._signature_columns = [*self._signature_columns, "length"]

    def _precompute_ref_logps(self, dataset, name, batch_size):
        t = time.perf_counter()
        out = super()._precompute_ref_logps(dataset, name, batch_size)
        type(self).precompute_s += time.perf_counter() - t
        return out

    def training_step(self, model, inputs, *args, **kwargs):
        mask = inputs["attention_mask"]  # (2M, T): M chosen rows then M rejected rows, right-padded
        self.batches.append({"pairs": int(mask.size(0)) // 2, "tokens": int(mask.sum()),
                             "padded_tokens": int(mask.numel()),
                             "loss_tokens": int(inputs["completion_mask"].sum())})
        return super().training_step(model, inputs, *args, **kwargs)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", required=True, help="HF model folder with its tokenizer")
    p.add_argument("--data", required=True, help="TRL preference JSONL")
    p.add_argument("--out", required=True, help="JSON file for the timings")
    p.add_argument("--workdir", required=True, help="TRL's output_dir (nothing is saved there)")
    p.add_argument("--steps", type=int, default=40)
    p.add_argument("--batch-size", type=int, default=16, help="pairs per optimizer step")
    p.add_argument("--max-length", type=int, default=256)
    p.add_argument("--beta", type=float, default=0.1)
    p.add_argument("--precompute", action="store_true", help="precompute_ref_log_probs=True (default: off, as TRL)")
    p.add_argument("--sampler", default="random", choices=["random", "group_by_length"],
                   help="TRL's train_sampling_strategy; random is its default. group_by_length needs a `length` "
                        "column, added here (prompt + longer response), since DPO rows have no `input_ids`")
    p.add_argument("--compile", action="store_true",
                   help="torch_compile=True (transformers' TrainingArguments: the model compiled with inductor)")
    args = p.parse_args()

    with open(args.data) as f:
        rows = [json.loads(line) for line in f if line.strip()]
    tokenizer = AutoTokenizer.from_pretrained(args.model)
    model = AutoModelForCausalLM.from_pretrained(args.model, dtype=torch.float32)
    cfg = DPOConfig(
        output_dir=args.workdir, max_steps=args.steps, per_device_train_batch_size=args.batch_size,
        gradient_accumulation_steps=1, max_length=args.max_length, beta=args.beta, loss_type=["sigmoid"],
        precompute_ref_log_probs=args.precompute,
        gradient_checkpointing=False,  # on by default in TRL's configs; tether does not recompute activations
        bf16=False, fp16=False, use_cpu=True, learning_rate=1e-4, seed=0,
        train_sampling_strategy=args.sampler, torch_compile=args.compile,
        save_strategy="no", eval_strategy="no", report_to=[], disable_tqdm=True, logging_steps=10,
    )
    built = time.perf_counter()
    trainer = CountingDPOTrainer(model=model, args=cfg, train_dataset=Dataset.from_list(rows),
                                 processing_class=tokenizer)
    built = time.perf_counter() - built
    if args.sampler == "group_by_length":
        CountingDPOTrainer.keep_length = True
        trainer.train_dataset = trainer.train_dataset.map(
            lambda x: {"length": len(x["prompt_ids"]) + max(len(x["chosen_ids"]), len(x["rejected_ids"]))})
    trainer.batches = []
    clock = StepClock()
    trainer.add_callback(clock)
    # The tokenised dataset, to check that both sides see the same ids and the same response tokens.
    ds = trainer.train_dataset
    prompt, chosen, rejected = (sum(len(x) for x in ds[k]) for k in ("prompt_ids", "chosen_ids", "rejected_ids"))
    data = {"pairs": len(ds), "tokens": 2 * prompt + chosen + rejected, "loss_tokens": chosen + rejected}

    trainer.train()

    steps = [{"step": i + 1, "time": clock.ends[i] - clock.start, "cpu": clock.cpu_ends[i] - clock.cpu_start, **b}
             for i, b in enumerate(trainer.batches)]
    result = {
        "side": "trl-precompute" if args.precompute else "trl", "steps": steps, "data": data,
        "precompute_s": CountingDPOTrainer.precompute_s, "constructor_s": built,
        "reference": ("log-probs precomputed once (precompute_ref_log_probs=True), no reference model kept"
                      if args.precompute else "a second model copy, one no-grad forward per step (TRL default)"),
        "sampler": args.sampler + (", torch_compile" if args.compile else ""),
    }
    write_result(args.out, result, cfg)


if __name__ == "__main__":
    main()
