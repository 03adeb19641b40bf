#!/usr/bin/env bash
# GPU check of tether.distributed (issue 8): pretrain, SFT, RM, DPO and PPO on the "test" preset on CUDA with bf16
# autocast and gradient checkpointing, first in one process, then SFT, RM, DPO and PPO again under
# `torchrun --nproc_per_node 1` (NCCL, DDP) and SFT under FSDP2; the torchrun runs' losses must match the
# one-process runs' (bf16 tolerance), every loss must be finite. About 2 minutes on one H100, most of it imports.
#
#     bash benchmarks/gpu_check.sh [OUT]           # from the repository root; OUT defaults to /tmp/tether-gpu-check
#     PYTHON=/path/to/python bash benchmarks/gpu_check.sh
#     GPU_CHECK_DEVICE=cpu bash benchmarks/gpu_check.sh   # a dry run of the script itself on the CPU (gloo, no bf16)
#     GPU_CHECK_ROLLOUT=0 bash benchmarks/gpu_check.sh    # without the last step, benchmarks/gpu_rollout.py
#
# The last step, benchmarks/gpu_rollout.py (issue 20), times rollouts at batch 64 on a Qwen2-0.5B-architecture model:
# tether's compiled static cache (CUDA graphs) against HF `generate`, with peak memory, and a GRPO step against TRL
# when trl and datasets are importable (carry their wheels); an estimated 4 to 6 minutes on an H100 (not yet run on
# one), its JSON in OUT. On the CPU it runs its --tiny check. Alone: python benchmarks/gpu_rollout.py --out DIR.
#
# Needs a Python with a CUDA build of torch, transformers, safetensors, tokenizers, pyyaml and rich; tether is
# taken from ./src (no install needed), the tiny world and model are built here, nothing is downloaded.
set -euo pipefail
PY=${PYTHON:-python3}
OUT=${1:-/tmp/tether-gpu-check}
DEVICE=${GPU_CHECK_DEVICE:-cuda}
BF16=$([ "$DEVICE" = cuda ] && echo true || echo false)
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}" TETHER_QUIET=1 HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
rm -rf "$OUT" && mkdir -p "$OUT"
step() { echo; echo "== $* ($(date +%T))"; }

step "environment"
DEVICE=$DEVICE "$PY" - <<'EOF'
import importlib.util, os, sys
missing = [m for m in ("torch", "transformers", "safetensors", "tokenizers", "yaml", "rich")
           if importlib.util.find_spec(m) is None]
if missing:
    sys.exit(f"gpu_check: FAILED: missing Python packages: {', '.join(missing)}")
import torch, transformers
print(f"python {sys.version.split()[0]}, torch {torch.__version__} (CUDA build {torch.version.cuda}), "
      f"transformers {transformers.__version__}")
print(f"torch.cuda.is_available(): {torch.cuda.is_available()}, devices: {torch.cuda.device_count()}, "
      f"NCCL: {torch.distributed.is_nccl_available()}")
if os.environ["DEVICE"] == "cuda":
    if not torch.cuda.is_available():
        sys.exit("gpu_check: FAILED: torch.cuda.is_available() is False (a CPU-only torch build, or no visible GPU)")
    print(f"device 0: {torch.cuda.get_device_name(0)}, bf16 supported: {torch.cuda.is_bf16_supported()}")
EOF

step "tiny world, tokenizer, comparisons (CPU)"
"$PY" - "$OUT" <<'EOF'
import json, sys
from pathlib import Path
from tether.tokenizer import iter_corpus_texts, train_tokenizer
from tether.world.build import WorldConfig, run
out = Path(sys.argv[1])
run(WorldConfig(out=str(out / "world"), n_countries=8, sft_countries=5, encyclopedia_docs=3, pretrain_dialogues=150,
                sft_demos=60, eval_per_category=4))
train_tokenizer(iter_corpus_texts(str(out / "world" / "corpus.jsonl")), vocab_size=400).save_pretrained(out / "tok")
rows = []
for i in range(48):
    good, bad = f"The capital of land {i % 16} is Osk {i % 16}.", "I do not know." + " Sorry." * (i % 3)
    a, b = (good, bad) if i % 2 == 0 else (bad, good)
    rows.append({"prompt": f"What is the capital of land {i % 16}?", "response_a": a, "response_b": b,
                 "choice": "A" if i % 2 == 0 else "B"})
(out / "prefs.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
EOF

HW="device=$DEVICE bf16=$BF16 gradient_checkpointing=true"
W="$OUT/world"
SFT="sft data=$W/sft.jsonl model=$OUT/pre/model batch_size=16 micro_batch_size=4 max_steps=8 eval_every=4 save_every=4 log_every=1 lr=3e-3 $HW"
RM="rm data=$OUT/prefs.jsonl backbone=$OUT/one/sft/model batch_size=8 micro_batch_size=4 max_steps=6 eval_every=3 save_every=3 log_every=1 max_length=128 $HW"
DPO="dpo data=$OUT/prefs.jsonl model=$OUT/one/sft/model batch_size=8 micro_batch_size=4 max_steps=6 eval_every=3 save_every=3 log_every=1 max_length=128 kl_eval_prompts=4 $HW"
PPO="ppo model=$OUT/one/sft/model prompts=$W/prompts.jsonl world=$W reward=rm reward_model=$OUT/one/rm/model rollout_batch=16 minibatch_size=8 micro_batch_size=4 max_new_tokens=24 ppo_epochs=2 max_steps=4 save_every=2 eval_every=0 eval_prompts=8 lr=1e-4 $HW"

step "one process: pretrain, sft, rm, dpo, ppo"
"$PY" -m tether pretrain corpus="$W/corpus.jsonl" tokenizer="$OUT/tok" preset=test out="$OUT/pre" max_steps=30 \
    batch_size=32 micro_batch_size=16 lr=3e-3 eval_every=0 log_every=10 save_every=0 $HW
for stage in SFT RM DPO PPO; do
    set -- ${!stage}
    name=$1; shift
    "$PY" -m tether "$name" out="$OUT/one/$name" "$@"
done
# LoRA (peft) on the device: SFT, and DPO with the adapters-disabled reference; GRPO (its own loss and sampling).
set -- $SFT; shift
"$PY" -m tether sft out="$OUT/one/sft_lora" lora.r=8 "$@"
set -- $DPO; shift
"$PY" -m tether dpo out="$OUT/one/dpo_lora" lora.r=8 "$@"
set -- $PPO; shift
"$PY" -m tether grpo out="$OUT/one/grpo" "$@" rollout_batch=4 group_size=4

step "torchrun --nproc_per_node 1 (NCCL on CUDA): sft, sft with fsdp2, rm, dpo, ppo"
TORCHRUN=("$PY" -m torch.distributed.run --standalone --nproc_per_node 1 -m tether)
for stage in SFT RM DPO PPO; do
    set -- ${!stage}
    name=$1; shift
    "${TORCHRUN[@]}" "$name" out="$OUT/ddp/$name" "$@"
done
set -- $SFT; shift
"${TORCHRUN[@]}" sft out="$OUT/ddp/sft_fsdp2" strategy=fsdp2 "$@"

step "compare"
"$PY" - "$OUT" <<'EOF'
import json, math, sys
from pathlib import Path
out, failed = Path(sys.argv[1]), []
def losses(folder):
    return [(r["step"], r["loss"]) for r in map(json.loads, (folder / "metrics.jsonl").read_text().splitlines())
            if "loss" in r]
for name, one in [("sft", "sft"), ("sft_fsdp2", "sft"), ("rm", "rm"), ("dpo", "dpo"), ("ppo", "ppo")]:
    a, b = losses(out / "one" / one), losses(out / "ddp" / name)
    if name == "ppo":  # later PPO steps sample from weights that bf16 rounding has already moved apart
        a, b = a[:1], b[:1]
    rel = max(abs(x - y) / max(abs(x), 1e-3) for (_, x), (_, y) in zip(a, b))
    ok = [s for s, _ in a] == [s for s, _ in b] and all(math.isfinite(x) for _, x in a + b) and rel < 5e-2
    print(f"{name:10s} steps {len(b)}  losses one process {[round(x, 4) for _, x in a]}")
    print(f"{'':10s} torchrun                    {[round(x, 4) for _, x in b]}  max rel diff {rel:.2e}  "
          f"{'ok' if ok else 'FAILED'}")
    failed += [] if ok else [name]
    assert (out / "ddp" / name / "model" / "config.json").exists(), name
for name in ("sft_lora", "dpo_lora", "grpo"):  # one-process runs: finite losses and a saved model
    got = losses(out / "one" / name)
    ok = bool(got) and all(math.isfinite(x) for _, x in got) and (out / "one" / name / "model" / "config.json").exists()
    print(f"{name:10s} steps {len(got)}  losses {[round(x, 4) for _, x in got]}  {'ok' if ok else 'FAILED'}")
    failed += [] if ok else [name]
sys.exit(f"gpu_check: FAILED: {', '.join(failed)}" if failed else None)
EOF

if [ "${GPU_CHECK_ROLLOUT:-1}" != 0 ]; then
    step "rollouts: tether's compiled static cache vs generate, GRPO step vs TRL (benchmarks/gpu_rollout.py)"
    if [ "$DEVICE" = cuda ]; then
        "$PY" benchmarks/gpu_rollout.py --out "$OUT"
    else
        "$PY" benchmarks/gpu_rollout.py --device cpu --tiny --out "$OUT"
    fi
fi
echo "gpu_check: OK"
