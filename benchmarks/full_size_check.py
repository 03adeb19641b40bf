"""One GPU, full size: a few steps of sft, dpo and grpo on a Qwen2-0.5B-architecture model (random init), with peak
GPU memory and tokens/s per stage.

    python benchmarks/full_size_check.py [--steps 3] [--max-length 1024] [--tiny]

The model has Qwen2-0.5B's shape (896 wide, 24 layers, 14 heads / 2 key-value heads, 4,864 MLP, a 151,936-token
vocabulary, tied embeddings: 494M parameters), built from its config with no download; the tokenizer is
tests/archkit.py's ChatML one (its ids are a subset of the vocabulary, so the compute is the real model's). Data: the
300 HH-RLHF rows the tests ship (tests/archkit.hh_rows: also there on a lent GPU machine), long replies
repeated up to --max-length so that the batches are full size. Every stage runs through `tether.cli.main` with bf16
and gradient checkpointing, exactly as a user's command would. `--tiny` runs a 2-layer, 64-wide model of the same
vocabulary on the CPU, to check the script. Prints a JSON line per stage and writes benchmarks/results/full_size.json.
"""
from __future__ import annotations

import argparse
import gzip
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

import archkit  # noqa: E402

QWEN2_05B = dict(hidden_size=896, num_hidden_layers=24, num_attention_heads=14, num_key_value_heads=2,
                 intermediate_size=4864, vocab_size=151936, max_position_embeddings=32768, tie_word_embeddings=True,
                 rope_theta=1000000.0)
TINY = dict(QWEN2_05B, hidden_size=64, num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=1,
            intermediate_size=128)


def build(folder: Path, tiny: bool) -> Path:
    import torch
    from transformers import AutoModelForCausalLM, Qwen2Config

    tok = archkit.build_tokenizer("chatml")
    config = Qwen2Config(bos_token_id=None, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
                         **(TINY if tiny else QWEN2_05B))
    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(config).save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


def data(folder: Path, max_length: int, n: int) -> Path:
    """n HH rows whose final replies are repeated to about half of max_length tokens each (the 512-token vocabulary
    writes about two characters per token), so that prompt + reply fill the batches."""
    rows = []
    for r in archkit.hh_rows(n):
        prompt, chosen = r["chosen"].rsplit("\n\nAssistant:", 1)
        rejected = r["rejected"].rsplit("\n\nAssistant:", 1)[1]
        times = max(1, max_length // max(len(chosen), 1))
        rows.append({"chosen": f"{prompt}\n\nAssistant:{chosen * times}",
                     "rejected": f"{prompt}\n\nAssistant:{rejected * times}"})
    path = folder / "hh.jsonl.gz"
    with gzip.open(path, "wt", encoding="utf-8") as f:
        f.writelines(json.dumps(r) + "\n" for r in rows)
    return path


def run_stage(name: str, args: list[str], out: Path) -> dict:
    import torch
    from tether.cli import main

    cuda = torch.cuda.is_available()
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    started = time.perf_counter()
    code = main([name, *args, f"out={out}"])
    wall = time.perf_counter() - started
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()] if code == 0 else []
    trained = [r for r in rows if "loss" in r]
    result = {"stage": name, "exit": code, "wall_s": round(wall, 1),
              "peak_gib": round(torch.cuda.max_memory_allocated() / 2**30, 2) if cuda else None,
              "tokens_per_s": trained[-1].get("tokens_per_s") if trained else None,
              "samples_per_s": trained[-1].get("samples_per_s") if trained else None,
              "last_loss": trained[-1].get("loss") if trained else None}
    print(json.dumps(result), flush=True)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--max-length", type=int, default=1024)
    parser.add_argument("--tiny", action="store_true", help="a 2-layer model on the CPU: checks the script")
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="full_size_"))
    model, hh = build(root / "model", args.tiny), data(root, args.max_length, 32 if args.tiny else 300)
    hw = ["device=cpu"] if args.tiny else ["bf16=true", "gradient_checkpointing=true"]
    common = [f"max_steps={args.steps}", "save_every=0", "eval_every=0", *hw]
    results = [
        run_stage("sft", [f"data={hh}", f"model={model}", f"max_length={args.max_length}", "batch_size=8",
                          "micro_batch_size=4", "eval_fraction=0", "log_every=1", *common], root / "sft"),
        run_stage("dpo", [f"data={hh}", f"model={model}", f"max_length={args.max_length}", "batch_size=8",
                          "micro_batch_size=2", f"max_prompt_length={args.max_length // 2}", "log_every=1", *common], root / "dpo"),
        run_stage("grpo", [f"prompts={hh}", f"model={model}", "reward=callable", "reward_fn=benchmarks.full_size_check:"
                           "length_reward", "rollout_batch=4", "group_size=8", "minibatch_size=16", "micro_batch_size=4",
                           "max_new_tokens=256", f"max_prompt_length={args.max_length // 2}", "eval_prompts=0",
                           *common], root / "grpo"),
    ]
    out = Path(__file__).parent / "results" / "full_size.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps({"args": vars(args), "results": results}, indent=1))


def length_reward(prompts: list, responses: list[str]) -> list[float]:
    """A reward for the check: shorter responses score higher (no reward model needed)."""
    return [-len(r) / 100 for r in responses]


if __name__ == "__main__":
    main()
