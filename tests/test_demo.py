"""The demo chained once end to end on the `test` preset and a tiny world (a smoke test, not a quality test)."""
from __future__ import annotations

import json
import math

from tether.cli import main

TINY = ["preset=test", "vocab_size=400", "base_samples=1", "world.n_countries=8", "world.sft_countries=5",
        "world.encyclopedia_docs=3", "world.pretrain_dialogues=150", "world.sft_demos=60",
        "world.eval_per_category=3", "world.train_prompts=12", "pretrain.max_steps=4", "pretrain.batch_size=8",
        "pretrain.micro_batch_size=8", "pretrain.warmup_steps=1", "sft.max_steps=3", "sft.batch_size=8",
        "sft.micro_batch_size=8", "sft.warmup_steps=1", "eval.max_new_tokens=6", "collect.max_new_tokens=6",
        "collect.responses_per_prompt=3", "raters.n_raters=4", "raters.overlap=2", "rm.max_steps=3",
        "rm.batch_size=8", "rm.micro_batch_size=8", "rm.warmup_steps=1", "ppo.max_steps=2", "ppo.rollout_batch=4",
        "ppo.minibatch_size=4", "ppo.micro_batch_size=4", "ppo.max_new_tokens=6", "ppo.eval_every=1",
        "ppo.eval_prompts=5", "ppo.save_every=0", "dpo.max_steps=2", "dpo.batch_size=4", "dpo.micro_batch_size=4",
        "dpo.eval_every=1", "dpo.kl_eval_prompts=2", "dpo.kl_eval_max_new_tokens=6", "dpo.monitor.samples=2",
        "dpo.monitor.max_new_tokens=6", "bon.n=3", "bon.n_prompts=4", "bon.max_new_tokens=6", "kl_prompts=3",
        "redteam.topics=1", "redteam.max_new_tokens=6", "audit.limit=4", "audit.max_new_tokens=6"]


def test_demo_runs_every_stage_and_resumes(tmp_path):
    assert main(["demo", f"runs={tmp_path}", "name=smoke", *TINY]) == 0
    root = tmp_path / "smoke"
    summary = json.loads((root / "summary.json").read_text())
    assert set(summary["timings_s"]) == {"world", "tokenizer", "pretrain", "base styles", "sft", "evaluate sft",
                                         "collect", "label", "rm", "rm report", "ppo", "dpo", "bon", "evaluate ppo",
                                         "evaluate dpo", "redteam sft", "redteam ppo", "redteam dpo", "audit (served)",
                                         "round 2"}
    for key in ("base_temperature_1", "sft_greedy"):
        assert set(summary[key]) >= {"fact", "harmful", "benign", "all"}
    rm = summary["reward_model"]
    assert 0 <= rm["rm_vs_raters"] <= 1 and 0 <= rm["accuracy_vs_gold"] <= 1
    as_rater = rm["held_out_as_rater"]  # the RM scored like a rater, beside the raters on the same pairs
    assert as_rater["items"] > 0 and 0 <= as_rater["rm_vs_majority"] <= 1
    assert 0 <= as_rater["rater_majority_agreement"] <= 1
    assert set(rm["bias"]) >= {"padding", "flattery", "hedging", "agreement", "confident_invention"}
    split = [rm["bias"][k]["n"] for k in ("agreement_common", "agreement_obscure") if k in rm["bias"]]
    assert sum(split) == rm["bias"]["agreement"]["n"]  # agreement probes split by common and obscure facts
    assert [p["step"] for p in summary["ppo"]] == [0, 1, 2]  # held-out proxy and gold at each evaluation
    assert all(math.isfinite(p["sqrt_kl"]) and p["gold"] is not None for p in summary["ppo"])
    for name in ("sft", "ppo", "dpo"):  # one footing: greedy gold, KL to SFT, red-team failure rate
        policy = summary["policies"][name]
        assert policy["summary"]["all"]["n"] > 0 and math.isfinite(policy["kl_k3"])
        assert 0 <= summary["redteam"][name]["all"]["fail_rate"] <= 1
    assert abs(summary["policies"]["sft"]["kl_k1"]) < 1e-4  # the SFT policy against itself
    for folder in ("world", "tokenizer", "pretrain/model", "sft/model", "collect", "label/raters", "rm/model",
                   "ppo/model", "dpo/model", "redteam/ppo"):
        assert (root / folder).is_dir(), folder
    # the three policies, served on loopback and audited over HTTP like a vendor's endpoints
    audit = json.loads((root / "audit/audit.json").read_text())
    assert [(t["name"], t["kind"]) for t in audit["targets"]] == [("sft", "endpoint"), ("ppo", "endpoint"),
                                                                  ("dpo", "endpoint")]
    assert set(summary["audit"]) == {"sft", "ppo", "dpo"} and set(audit["suites"]) == {"xstest", "sycophancy", "workload"}
    assert audit["suites"]["xstest"] == audit["suites"]["workload"] == 4 and audit["suites"]["sycophancy"] > 0
    round2 = summary["round2"]  # the iterate round: provenance and the hack comparison
    assert round2["round"] == 2 and (root / "round2/ppo/model").is_dir()
    assert set(round2["hacks"]) >= {"reduced_hacks"}
    report = (root / "report.html").read_text()
    assert "<html" in report and "data:image/png;base64," in report and "XSTest" in report
    bon = json.loads((root / "bon/bon.json").read_text())  # best-of-n of the SFT policy against the demo's RM
    assert [p["n"] for p in bon["curve"]] == [1, 2, 3] and bon["reward"] == "rm" and bon["prompts"] == 4
    assert "Over-optimisation: best-of-n beside RL" in report
    # --resume skips every finished stage and only re-evaluates
    assert main(["demo", f"runs={tmp_path}", "name=smoke", "--resume", *TINY]) == 0
    again = json.loads((root / "summary.json").read_text())
    assert not {"pretrain", "rm", "ppo", "dpo", "bon", "redteam ppo", "audit (served)", "round 2"} & set(again["timings_s"])
    # the whole demo again without --resume redoes every stage, round 2 included (iterate alone would refuse it)
    (root / "round2/marker").write_text("from the first run")
    assert main(["demo", f"runs={tmp_path}", "name=smoke", *TINY]) == 0
    assert "round 2" in json.loads((root / "summary.json").read_text())["timings_s"]
    assert not (root / "round2/marker").exists() and (root / "round2/round.json").is_file()
