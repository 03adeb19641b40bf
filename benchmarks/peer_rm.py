"""TRL's RewardTrainer on a prepared model folder, timed per optimizer step: the peer side of bench_rm.py.

Runs in the peer venv (`.peer`, TRL + transformers, no tether), so it takes everything as paths:

    .peer/bin/python benchmarks/peer_rm.py --model DIR --data trl.jsonl --steps 60 --out trl.json

`--model` holds a causal LM and its tokenizer; it is loaded with AutoModelForSequenceClassification and
num_labels=1 (for a Llama: LlamaForSequenceClassification, the LlamaModel body and a bias-free linear
`score` head read at the last token that is not `pad_token_id`; the head is freshly initialised).
`--data` is TRL preference JSONL (prompt, chosen, rejected), here conversational, so TRL tokenises each
prompt + response with the tokenizer's chat template. TRL concatenates the B chosen and B rejected
sequences of a batch into one (2B, T) forward pass. The JSON written to `--out` holds one record per
optimizer step (wall time at the step's end, pairs, sequences, non-pad and padded tokens), the totals
of the tokenised dataset (to check both sides train on the same ids), versions, and peak RSS.
"""
from __future__ import annotations

import argparse
import json

import torch
from datasets import Dataset
from peer_common import StepClock, write_result
from transformers import AutoModelForSequenceClassification, AutoTokenizer
from trl import RewardConfig, RewardTrainer


class CountingRewardTrainer(RewardTrainer):
    """RewardTrainer that records what each micro-batch holds; nothing about the step is changed."""

    batches: list[dict]
    keep_length: bool = False

    def _set_signature_columns_if_needed(self):
        # group_by_length reads a `length` column; the fixed signature would drop it before the sampler sees it
        super()._set_signature_columns_if_needed()
        if self.keep_length and "length" not in self._signature_columns:
            self._signature_columns = [*self._signature_columns, "length"]

    def training_step(self, model, inputs, *args, **kwargs):
        mask = inputs["attention_mask"]  # (2B, T): B chosen rows, then B rejected rows
        self.batches.append({"pairs": int(mask.size(0)) // 2, "sequences": int(mask.size(0)),
                             "tokens": int(mask.sum()), "padded_tokens": int(mask.numel())})
        return super().training_step(model, inputs, *args, **kwargs)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", required=True, help="HF model folder with its tokenizer")
    p.add_argument("--data", required=True, help="TRL preference JSONL (prompt, chosen, rejected)")
    p.add_argument("--out", required=True, help="JSON file for the timings")
    p.add_argument("--workdir", required=True, help="TRL's output_dir (nothing is saved there)")
    p.add_argument("--steps", type=int, default=60)
    p.add_argument("--batch-size", type=int, default=16, help="pairs per step")
    p.add_argument("--max-length", type=int, default=256)
    p.add_argument("--lr", type=float, default=1e-4)
    p.add_argument("--sampler", default="random", choices=["random", "group_by_length"],
                   help="TRL's train_sampling_strategy; random is its default. group_by_length reads a `length` "
                        "column, added here (the longer of chosen and rejected)")
    p.add_argument("--compile", action="store_true",
                   help="torch_compile=True (transformers' TrainingArguments: the model compiled with inductor)")
    args = p.parse_args()

    with open(args.data) as f:
        rows = [json.loads(line) for line in f if line.strip()]
    tokenizer = AutoTokenizer.from_pretrained(args.model)
    model = AutoModelForSequenceClassification.from_pretrained(args.model, num_labels=1, dtype=torch.float32)
    cfg = RewardConfig(
        output_dir=args.workdir, max_steps=args.steps, per_device_train_batch_size=args.batch_size,
        gradient_accumulation_steps=1, max_length=args.max_length, learning_rate=args.lr, seed=0,
        gradient_checkpointing=False,  # RewardConfig turns it on by default; tether does not recompute activations
        bf16=False, fp16=False, use_cpu=True,  # RewardConfig defaults to bf16; both sides run fp32
        train_sampling_strategy=args.sampler, torch_compile=args.compile,
        save_strategy="no", eval_strategy="no", report_to=[], disable_tqdm=True, logging_steps=10,
    )
    trainer = CountingRewardTrainer(model=model, args=cfg, train_dataset=Dataset.from_list(rows),
                                    processing_class=tokenizer)
    if args.sampler == "group_by_length":
        trainer.keep_length = True
        trainer.train_dataset = trainer.train_dataset.map(
            lambda x: {"length": max(len(x["chosen_ids"]), len(x["rejected_ids"]))})
    trainer.batches = []
    clock = StepClock()
    trainer.add_callback(clock)
    # The tokenised dataset (after TRL's max_length filter), to check both sides see the same ids.
    ds = trainer.train_dataset
    data = {"pairs": len(ds), "pair_tokens": sum(len(x) for x in ds["chosen_ids"]) + sum(len(x) for x in ds["rejected_ids"]),
            "filtered_out": len(rows) - len(ds)}

    trainer.train()

    steps = [{"step": i + 1, "time": clock.ends[i] - clock.start, **b} for i, b in enumerate(trainer.batches)]
    result = {
        "side": "trl", "steps": steps, "data": data,
        "sampler": ("random (TRL's default)" if args.sampler == "random" else args.sampler)
                   + (", torch_compile" if args.compile else ""),
        "model_class": type(trainer.model).__name__,
    }
    write_result(args.out, result, cfg)


if __name__ == "__main__":
    main()
