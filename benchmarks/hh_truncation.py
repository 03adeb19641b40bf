"""What max_length does to real HH-RLHF conversations: SFT's final replies kept or cut, DPO's pairs kept or dropped.

    .venv/bin/python benchmarks/hh_truncation.py [--rows 300] [--max-length 128] [--vocab 512]

For each tokenizer shape of tests/archkit.py (ChatML, GPT-2 base with chat_template=hh, Llama-3), trained here on HH
text with --vocab tokens (a real 50k-vocabulary tokenizer writes fewer tokens per reply, so more would fit), the SFT
stage's data report of the first --rows HH conversations and the DPO stage's of their comparisons, through the very
functions the stages call. Prints one table and writes benchmarks/results/hh_truncation.json.
"""
from __future__ import annotations

import argparse
import gzip
import json
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

import archkit  # noqa: E402

SHAPES = (("chatml", ""), ("base", "hh"), ("llama3", ""))


def measure(rows: int, max_length: int, vocab: int) -> list[dict]:
    from tether.chat import chat_format
    from tether.data.formats import load_comparisons, load_conversations
    from tether.stages.dpo import DPOConfig
    from tether.stages.dpo.pairs import encode_comparisons
    from tether.stages.sft import encode_conversations

    folder = Path(tempfile.mkdtemp())
    data = folder / "hh.jsonl.gz"
    with gzip.open(data, "wt", encoding="utf-8") as f:
        f.writelines(json.dumps(r) + "\n" for r in archkit.hh_rows(rows))
    conversations, comparisons = load_conversations(data), load_comparisons(data)
    out = []
    for shape, setting in SHAPES:
        fmt = chat_format(archkit.build_tokenizer(shape, vocab), setting)
        _, sft = encode_conversations(fmt, conversations, max_length)
        _, dpo = encode_comparisons(fmt, comparisons, DPOConfig(max_length=max_length))
        out.append({"shape": shape, "chat_template": setting or "own", "sft": sft, "dpo": dpo})
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=300)
    parser.add_argument("--max-length", type=int, default=128)
    parser.add_argument("--vocab", type=int, default=512)
    args = parser.parse_args()
    results = measure(args.rows, args.max_length, args.vocab)
    print(f"HH-RLHF harmless-base, first {args.rows} rows, max_length={args.max_length}, vocab {args.vocab}")
    print("shape   template  conversations  final reply whole  cut (too long alone)  earlier turns dropped  "
          "prompt start cut  | pairs  kept  dropped (a response too long)  prompt cut")
    for r in results:
        s, d = r["sft"], r["dpo"]
        print(f"{r['shape']:<7} {r['chat_template']:<9} {s['conversations']:>13}  {s['final_reply_kept_whole']:>17}  "
              f"{s['final_reply_cut']:>20}  {s['earlier_turns_dropped']:>21}  {s['prompt_cut']:>16}  | "
              f"{d['rows']:>5}  {d['pairs']:>4}  {d['dropped_response_too_long']:>29}  {d['truncated_pairs']:>10}")
    out = Path(__file__).parent / "results" / "hh_truncation.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps({"command": " ".join(sys.argv), "args": vars(args), "results": results}, indent=1))


if __name__ == "__main__":
    main()
