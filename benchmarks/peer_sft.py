"""TRL's SFTTrainer on a prepared model folder, timed per optimizer step: the peer side of bench_sft.py.

Runs in the peer venv (`.peer`, TRL + transformers, no tether), so it takes everything as paths:

    .peer/bin/python benchmarks/peer_sft.py --model DIR --data sft.jsonl --steps 30 --out trl.json

`--model` holds the Llama and its tokenizer (whose chat template marks assistant turns with
`{% generation %}`); `--data` is JSONL rows `{"messages": [...]}`. The JSON written to `--out` holds one
record per optimizer step (wall time and this process's CPU time at the step's end, non-pad tokens, padded
tokens, sequences, loss tokens), the totals of the tokenised dataset (to check both sides train on the same ids),
versions, and this process's peak RSS.
"""
from __future__ import annotations

import argparse
import json

import torch
from datasets import Dataset
from peer_common import StepClock, write_result
from transformers import AutoModelForCausalLM, AutoTokenizer
from trl import SFTConfig, SFTTrainer


class CountingSFTTrainer(SFTTrainer):
    """SFTTrainer that records what each micro-batch holds; nothing about the step is changed."""

    batches: list[dict]

    def training_step(self, model, inputs, *args, **kwargs):
        labels = inputs["labels"]  # (B, T), unshifted: the model shifts them
        if "attention_mask" in inputs:
            mask = inputs["attention_mask"]  # (B, T)
            sequences, tokens, padded = int(mask.size(0)), int(mask.sum()), int(mask.numel())
        else:  # padding-free: one (1, N) row of the batch's sequences, each starting at position 0
            positions = inputs["position_ids"]
            sequences, tokens, padded = int((positions == 0).sum()), int(positions.numel()), int(positions.numel())
        self.batches.append({"sequences": sequences, "tokens": tokens, "padded_tokens": padded,
                             "loss_tokens": int((labels[:, 1:] != -100).sum())})
        return super().training_step(model, inputs, *args, **kwargs)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", required=True, help="HF model folder with its tokenizer")
    p.add_argument("--data", required=True, help="JSONL of {'messages': [...]} rows")
    p.add_argument("--out", required=True, help="JSON file for the timings")
    p.add_argument("--workdir", required=True, help="TRL's output_dir (nothing is saved there)")
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--max-length", type=int, default=256)
    p.add_argument("--sampler", default="random", choices=["random", "group_by_length"],
                   help="TRL's train_sampling_strategy; random is its default")
    p.add_argument("--padding-free", action="store_true",
                   help="padding_free=True: each batch one row of its sequences with position ids reset per "
                        "sequence (TRL's fastest setting on a model whose attention keeps the sequences apart)")
    p.add_argument("--compile", action="store_true",
                   help="torch_compile=True (transformers' TrainingArguments: the model compiled with inductor)")
    args = p.parse_args()

    with open(args.data) as f:
        rows = [json.loads(line) for line in f if line.strip()]
    tokenizer = AutoTokenizer.from_pretrained(args.model)
    model = AutoModelForCausalLM.from_pretrained(args.model, dtype=torch.float32)
    cfg = SFTConfig(
        output_dir=args.workdir, max_steps=args.steps, per_device_train_batch_size=args.batch_size,
        gradient_accumulation_steps=1, assistant_only_loss=True,
        # padding-free without packing refuses a max_length (it would not cut): the world's conversations fit it
        max_length=None if args.padding_free else args.max_length,
        packing=False, padding_free=args.padding_free,
        gradient_checkpointing=False,  # SFTConfig turns it on by default; tether does not recompute activations
        bf16=False, fp16=False, use_cpu=True, learning_rate=5e-4, seed=0,
        train_sampling_strategy=args.sampler, torch_compile=args.compile,
        save_strategy="no", eval_strategy="no", report_to=[], disable_tqdm=True, logging_steps=10,
    )
    trainer = CountingSFTTrainer(model=model, args=cfg, train_dataset=Dataset.from_list(rows),
                                 processing_class=tokenizer)
    trainer.batches = []
    clock = StepClock()
    trainer.add_callback(clock)
    # The tokenised dataset, to check that both sides see the same ids and the same loss tokens.
    ds = trainer.train_dataset
    data = {"sequences": len(ds), "tokens": sum(len(x) for x in ds["input_ids"]),
            "loss_tokens": sum(sum(t != -100 for t in labels[1:]) for labels in ds["labels"])}

    trainer.train()

    steps = [{"step": i + 1, "time": clock.ends[i] - clock.start, "cpu": clock.cpu_ends[i] - clock.cpu_start, **b}
             for i, b in enumerate(trainer.batches)]
    result = {
        "side": "trl", "steps": steps, "data": data,
        "sampler": args.sampler + (", padding-free" if args.padding_free else "")
                   + (", torch_compile" if args.compile else ""),
    }
    write_result(args.out, result, cfg)


if __name__ == "__main__":
    main()
