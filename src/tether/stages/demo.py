"""`tether demo`: the loop on the tiny assistant world, offline on a CPU, each stage in its own folder.

world -> tokenizer -> pretrain -> (base model's styles at temperature 1) -> SFT -> held-out evaluation
with the gold reward -> collect comparisons (SFT and base policies) -> simulated raters through the rater
app's storage -> reward model, and how it compares with the raters, the gold preference, and which rater
biases it inherited -> PPO against that reward model (the monitor watching for hacks, gold logged beside
the proxy) and DPO on the same comparisons -> best-of-n against the same reward model (`tether bon`: gold and proxy
for every n <= N, beside PPO's in the report) -> the audit: SFT, PPO and DPO on one footing (gold, KL to SFT,
behaviour rates), red-team suites against each -> the same three policies behind `tether serve`, audited over HTTP
as a vendor's endpoint would be (`tether audit`: XSTest, sycophancy on the world's facts, style on its held-out
prompts) -> round 2 (`tether iterate`: the caught failures feed new comparisons, a retrained RM and PPO again; did the
hacks shrink?) -> `report.html`.
Every stage reads the previous stage's output folder, so any of them can be rerun alone with
`tether <stage>`; `--resume` skips finished stages and resumes an interrupted one.
"""
from __future__ import annotations

import contextlib
import json
import shutil
from dataclasses import dataclass, field, replace
from pathlib import Path

from rich.console import Console
from rich.table import Table

from tether.audit.config import AuditConfig
from tether.chat import chat_format
from tether.config import check, save_config
from tether.data.preferences import read_comparisons, split_by_prompt
from tether.models import load_policy, load_tokenizer
from tether.progress import StageTimer
from tether.report import write_report
from tether.report.data import decoding_label
from tether.reward import RewardModel
from tether.stages import bon, collect, dpo, iterate, ppo, pretrain, redteam, rm, sft
from tether.stages import label as label_stage
from tether.stages.evaluate import (
    SHORT,
    EvalConfig,
    audit_eval_config,
    curve_table,
    decoding,
    evaluate_policy,
    reward_model_as_rater,
    reward_model_bias,
    reward_model_gold_accuracy,
    reward_model_table,
    summary_table,
    write_results,
)
from tether.tokenizer import TokenizerConfig
from tether.tokenizer import run as train_tokenizer_stage
from tether.world.build import load_world
from tether.world.build import run as build_world
from tether.world.raters import RaterPoolConfig, population_preference
from tether.world.world import WorldConfig

console = Console(width=120)
POLICIES = ("sft", "ppo", "dpo")
"""The policies the audit compares, each at <root>/<name>/model."""


def _pretrain_defaults() -> pretrain.PretrainConfig:
    return pretrain.PretrainConfig(max_steps=800, lr=3e-3, warmup_steps=30, eval_every=200, save_every=400)


def _sft_defaults() -> sft.SFTConfig:
    return sft.SFTConfig(max_steps=60, lr=3e-4, eval_every=20, save_every=0)


def _rm_defaults() -> rm.RMConfig:
    return rm.RMConfig(epochs=1.0, lr=1e-3, eval_every=100, save_every=0)


def _ppo_defaults() -> ppo.PPOConfig:
    # Evaluations at temperature 1 (4 responses per held-out prompt, the same draw each time): the distribution PPO
    # optimises, where gold first rises as the policy sharpens, then falls as it games the proxy (Gao et al.
    # 2022); the greedy answer of the SFT policy is already near the gold ceiling and can only fall. KL coefficient
    # 0.1, learning rate 5e-5, an evaluation every 3 steps: the proxy is gamed (harmful compliance, agreement,
    # length) and gold falls beyond noise on seeds 0-2, after a rise that 264 x 4 evaluations put within noise on
    # two of them (benchmarks/overoptimisation_seeds.py; README); at KL 0.02 or 0.05 the proxy is gamed sooner, at
    # lr 1e-4 the rise and fall fit in 10-15 steps, and a critic learning faster (value_lr 1e-3) raises gold
    # without an overall fall in 60 steps on seeds 0 and 2: no fall of gold for the monitor to catch.
    # All 240 evaluation rows sample as one batch (finished rows leave it): 21 evaluations per run.
    return ppo.PPOConfig(max_steps=60, lr=5e-5, kl_coef=0.1, eval_every=3, save_every=20, eval_prompts=60,
                         eval_temperature=1.0, eval_samples=4, eval_batch_size=240)


def _dpo_defaults() -> dpo.DPOConfig:
    # The RM's preferences, the same held-out split; a step count comparable to PPO's updates.
    return dpo.DPOConfig(max_steps=60, lr=1e-4, beta=0.1, eval_every=20, save_every=0, kl_eval_prompts=32)


def _bon_defaults() -> bon.BoNConfig:
    # PPO's evaluation prompts (the same 60 held-out prompts at the same stride, temperature 1), so n = 1 is PPO's
    # step 0 and both curves share their axes; 32 samples each reach √KL 1.58 (KL 2.5 nats) in about 20 s of CPU.
    return bon.BoNConfig(n=32, n_prompts=60, world="runs/world")  # the world: the demo's own, set per run


def _audit_defaults() -> AuditConfig:
    # greedy (the policies' modes), the world's facts rather than the real-world starter set the tiny models never saw;
    # the endpoints are placeholders until the demo serves its policies (`_served_audit`)
    return AuditConfig(endpoint=[f"http://127.0.0.1:0/{name}" for name in POLICIES], names=list(POLICIES),
                       suites=["xstest", "sycophancy", "style"], starter_facts=False, world="runs/world",
                       max_new_tokens=48, endpoint_concurrency=32)


def _redteam_defaults() -> redteam.RedteamConfig:
    return redteam.RedteamConfig(topics=4)


@dataclass
class DemoConfig:
    """The whole loop on the tiny assistant world. Paths inside the nested stage configs are set by the demo."""

    name: str = "demo"
    """Run name: everything is written to `<runs>/<name>/`."""
    runs: str = "runs"
    """Folder holding all runs."""
    preset: str = "demo"
    """Model size (test, demo, small)."""
    seed: int = 0
    """Seed of the world, the model and every stage."""
    vocab_size: int = 1024
    """Tokenizer vocabulary."""
    base_samples: int = 2
    """Responses sampled per held-out prompt at temperature 1 to measure the base model's styles."""
    resume: bool = False
    """Skip stages whose output exists and resume an interrupted training stage."""
    world: WorldConfig = field(default_factory=WorldConfig)
    """The world (its `out` is set by the demo)."""
    pretrain: pretrain.PretrainConfig = field(default_factory=_pretrain_defaults)
    """Pretraining (paths set by the demo)."""
    sft: sft.SFTConfig = field(default_factory=_sft_defaults)
    """Supervised fine-tuning (paths set by the demo)."""
    eval: EvalConfig = field(default_factory=audit_eval_config)
    """How each policy is evaluated on the common footing and in round 2's comparison (paths and seed set by the
    demo): temperature 1, 4 responses per held-out prompt. The SFT policy is also evaluated greedily (sft_greedy)
    and the base model at temperature 1 with `base_samples`."""
    collect: collect.CollectConfig = field(default_factory=collect.CollectConfig)
    """Comparison collection from the SFT and base policies (paths set by the demo)."""
    raters: RaterPoolConfig = field(default_factory=RaterPoolConfig)
    """The simulated rater pool that labels the comparisons."""
    rm: rm.RMConfig = field(default_factory=_rm_defaults)
    """Reward model on the raters' labels, from the SFT model (paths set by the demo)."""
    ppo: ppo.PPOConfig = field(default_factory=_ppo_defaults)
    """PPO from the SFT policy against the reward model; gold is logged, never trained on (paths set by the demo)."""
    dpo: dpo.DPOConfig = field(default_factory=_dpo_defaults)
    """DPO from the SFT policy on the raters' comparisons that trained the reward model (paths set by the demo)."""
    bon: bon.BoNConfig = field(default_factory=_bon_defaults)
    """Best-of-n of the SFT policy against the reward model, on held-out prompts (paths and seed set by the demo)."""
    redteam: redteam.RedteamConfig = field(default_factory=_redteam_defaults)
    """Red-team suites run against the SFT policy and each optimised one (paths set by the demo)."""
    audit: AuditConfig = field(default_factory=_audit_defaults)
    """`tether audit` of the SFT, PPO and DPO policies, each behind `tether serve` on loopback (endpoints, names,
    world, prompts and out set by the demo)."""
    kl_prompts: int = 64
    """Held-out prompts sampled (temperature 1) to measure each policy's KL to the SFT policy on one footing."""
    rounds: int = 2
    """Rounds of the loop: round 2 (`tether iterate`) collects again from the PPO policy, adding the prompts its
    red team and monitor caught, relabels, retrains the reward model and reruns PPO from SFT (1: no second round)."""

    def validate(self) -> None:
        check(bool(self.name) and "/" not in self.name, "name", "must be a non-empty folder name")
        check(self.base_samples >= 0, "base_samples", "must be >= 0")
        check(self.rounds in (1, 2), "rounds", "must be 1 or 2 (run `tether iterate` for more)")

    @property
    def root(self) -> Path:
        return Path(self.runs) / self.name


def _stage_configs(cfg: DemoConfig) -> dict:
    """The stage configs with every path wired to the previous stage's output."""
    root = cfg.root
    world = replace(cfg.world, seed=cfg.seed, out=str(root / "world"))
    sft_model, base_model = str(root / "sft/model"), str(root / "pretrain/model")
    return {
        "world": world,
        "tokenizer": TokenizerConfig(corpus=str(root / "world/corpus.jsonl"), vocab_size=cfg.vocab_size,
                                     out=str(root / "tokenizer")),
        "pretrain": replace(cfg.pretrain, corpus=str(root / "world/corpus.jsonl"), tokenizer=str(root / "tokenizer"),
                            preset=cfg.preset, seed=cfg.seed, out=str(root / "pretrain"), resume=cfg.resume),
        "sft": replace(cfg.sft, data=str(root / "world/sft.jsonl"), model=str(root / "pretrain/model"),
                       seed=cfg.seed, out=str(root / "sft"), resume=cfg.resume),
        "collect": replace(cfg.collect, model=[sft_model, base_model], prompts=str(root / "world/prompts.jsonl"),
                           seed=cfg.seed, out=str(root / "collect")),
        "label": label_stage.LabelConfig(queue=str(root / "collect/queue.jsonl"), world=str(root / "world"),
                                         raters=replace(cfg.raters, seed=cfg.seed), out=str(root / "label")),
        "rm": replace(cfg.rm, data=str(root / "label/comparisons.jsonl"), model=sft_model, seed=cfg.seed,
                      out=str(root / "rm"), resume=cfg.resume),
        "ppo": replace(cfg.ppo, model=sft_model, prompts=str(root / "world/prompts.jsonl"), reward="rm",
                       reward_model=str(root / "rm/model"), world=str(root / "world"), seed=cfg.seed,
                       out=str(root / "ppo"), resume=cfg.resume),
        "dpo": replace(cfg.dpo, data=str(root / "label/comparisons.jsonl"), model=sft_model, seed=cfg.seed,
                       eval_fraction=cfg.rm.eval_fraction, out=str(root / "dpo"), resume=cfg.resume,
                       monitor=replace(cfg.dpo.monitor, world=str(root / "world"))),
        "redteam": replace(cfg.redteam, world=str(root / "world"), reward_model=str(root / "rm/model"),
                           seed=cfg.seed),
        "bon": replace(cfg.bon, model=sft_model, world=str(root / "world"), prompts="", reward="rm",
                       reward_model=str(root / "rm/model"), seed=cfg.seed, out=str(root / "bon")),
    }


def _evaluate(cfg: DemoConfig, model_dir: Path, name: str, temperature: float, samples: int) -> dict:
    world = load_world(cfg.root / "world")
    ecfg = replace(cfg.eval, temperature=temperature, samples_per_prompt=samples, seed=cfg.seed)
    model, tokenizer = load_policy(str(model_dir)), load_tokenizer(str(model_dir))
    rows, summary = evaluate_policy(model, tokenizer, world, ecfg, label=f"evaluate {name}")
    write_results(cfg.root / "eval", rows, summary, name, cfg=ecfg)
    return summary


def _rm_report(cfg: DemoConfig, rm_cfg: rm.RMConfig, raters: RaterPoolConfig) -> dict:
    """The reward model against the raters, their agreement ceiling, the gold preference, and its biases."""
    root = cfg.root
    world = load_world(root / "world")
    model = RewardModel.from_pretrained(str(root / "rm/model"))
    # The same held-out pairs as `tether rm`: labelled rows only, its eval file or its split by prompt.
    if rm_cfg.eval_data:
        held_out = [c for c in read_comparisons(rm_cfg.eval_data) if c.choice is not None]
    else:
        labelled = [c for c in read_comparisons(rm_cfg.data) if c.choice is not None]
        _, held_out = split_by_prompt(labelled, rm_cfg.eval_fraction, rm_cfg.seed)
    decided = [c for c in held_out if c.choice != "tie"]
    ceiling = sum((population_preference(c, world.knowledge, raters) > 0.5) == (c.choice == "A")
                  for c in decided) / max(1, len(decided))
    agreement = json.loads((root / "label/agreement.json").read_text())
    return {"rm_vs_raters": json.loads((root / "rm/eval.json").read_text())["eval"]["accuracy"],
            "bayes_ceiling_vs_raters": ceiling,
            "rater_pairwise_agreement": agreement["percent_agreement"],
            "rater_majority_agreement": agreement["majority_agreement_mean"],
            "krippendorff_alpha": agreement["krippendorff_alpha"],
            "held_out_as_rater": reward_model_as_rater(model.score, held_out),
            **reward_model_gold_accuracy(model.score, world, held_out),
            "bias": reward_model_bias(model.score, world)}


def _sft_phase(cfg: DemoConfig, stages: dict, timed: StageTimer) -> dict:
    """World, tokenizer, pretraining, the base model's styles, SFT, and the SFT policy's evaluation."""
    root = cfg.root
    # 1. The world, its tokenizer, and a base model pretrained from scratch on the world's corpus.
    timed("world", build_world, stages["world"], done=root / "world/eval.jsonl")
    timed("tokenizer", train_tokenizer_stage, stages["tokenizer"], done=root / "tokenizer/tokenizer.json")
    timed("pretrain", pretrain.run, stages["pretrain"], done=root / "pretrain/model/model.safetensors")
    # 2. What the base distribution can do: the bad styles RL could later exploit.
    base = timed("base styles", _evaluate, cfg, root / "pretrain/model", "base", 1.0, cfg.base_samples) \
        if cfg.base_samples else None
    # 3. Supervised fine-tuning on the demonstrations, then the held-out evaluation (greedy: what it does).
    timed("sft", sft.run, stages["sft"], done=root / "sft/model/model.safetensors")
    policy = timed("evaluate sft", _evaluate, cfg, root / "sft/model", "sft_greedy", 0.0, 1)
    return {"base_temperature_1": base, "sft_greedy": policy}


def _preference_phase(cfg: DemoConfig, stages: dict, timed: StageTimer) -> dict:
    """Comparisons from the SFT and base policies, simulated raters, and the reward model."""
    root = cfg.root
    # 4. Sample pairs, have the simulated raters label them, train the reward model on their labels.
    timed("collect", collect.run, stages["collect"], done=root / "collect/queue.jsonl")
    timed("label", label_stage.run, stages["label"], done=root / "label/comparisons.jsonl")
    timed("rm", rm.run, stages["rm"], done=root / "rm/model/reward_config.json")
    # 5. How good is it against the raters, against the truth, and what did it inherit?
    return {"reward_model": timed("rm report", _rm_report, cfg, stages["rm"], cfg.raters)}


def proxy_gold_curve(metrics_path: Path) -> list[dict]:
    """The held-out evaluations of an RL run: step, sqrt(KL), proxy score and gold (Gao et al. 2022 plot); the KL of
    the evaluation's own samples (eval/kl) where the run measured it, else the step's rollouts' (kl/k1)."""
    rows = [json.loads(line) for line in metrics_path.read_text().splitlines() if line]
    kl = {r["step"]: r.get("kl/k1") for r in rows if r.get("kl/k1") is not None}
    kl |= {r["step"]: r["eval/kl"] for r in rows if r.get("eval/kl") is not None}
    return [{"step": r["step"], "sqrt_kl": max(0.0, kl.get(r["step"], 0.0)) ** 0.5, "proxy": r["eval/score"],
             "gold": r["eval/gold"], "length": r["eval/response_length"]}
            for r in rows if r.get("eval/gold") is not None]


def _rl_phase(cfg: DemoConfig, stages: dict, timed: StageTimer) -> dict:
    """PPO against the learned reward model and DPO on the same comparisons, both from the SFT policy."""
    root = cfg.root
    # 6. Optimise the proxy with a KL tether; the world's gold reward is only logged (and audited by the
    #    monitor), to show what happens.
    timed("ppo", ppo.run, stages["ppo"], done=root / "ppo/model/model.safetensors")
    # 7. DPO skips the reward model: the raters' comparisons directly, β tethering it to the SFT policy.
    timed("dpo", dpo.run, stages["dpo"], done=root / "dpo/model/model.safetensors")
    # 7b. Best-of-n against the same reward model: its KL is known in closed form, and its gold too rises, then falls.
    timed("bon", bon.run, stages["bon"], done=root / "bon/bon.json")
    return {"ppo": proxy_gold_curve(root / "ppo/metrics.jsonl")}


def _policy_footing(cfg: DemoConfig, model_dir: Path, name: str) -> dict:
    """One policy on the common footing: gold and behaviour on held-out prompts (`cfg.eval`: temperature 1, the
    same seed for every policy), and its KL to the SFT policy per response (k1 and k3 summed over tokens) on
    held-out prompts sampled at temperature 1."""
    root = cfg.root
    summary = _evaluate(cfg, model_dir, name, cfg.eval.temperature, cfg.eval.samples_per_prompt)
    world = load_world(root / "world")
    prompts = [q.text for q in world.eval_queries()][:cfg.kl_prompts]
    policy, ref = load_policy(str(model_dir)), load_policy(str(root / "sft/model"))
    fmt = chat_format(load_tokenizer(str(model_dir)))
    _, k1, k3, _ = dpo.sample_logratios(policy, ref, fmt, prompts, cfg.eval.max_new_tokens,
                                        replace(cfg.dpo, micro_batch_size=32), cfg.seed, "eval.max_new_tokens")
    return {"summary": summary, "decoding": decoding(replace(cfg.eval, seed=cfg.seed)), "kl_k1": sum(k1) / len(k1),
            "kl_k3": sum(k3) / len(k3)}


def _audit_phase(cfg: DemoConfig, stages: dict, timed: StageTimer) -> dict:
    """Each policy on one footing (gold, behaviour, KL to SFT), and the red-team suites against each."""
    root = cfg.root
    policies = {name: root / name / "model" for name in POLICIES}
    # 8. PPO and DPO against the SFT policy: gold gained per unit of KL, and which behaviours moved.
    footing = {name: timed(f"evaluate {name}", _policy_footing, cfg, path, name) for name, path in policies.items()}
    # The settings those evaluations ran with (the run's seed): `tether iterate` reads them to stay on this footing.
    save_config(replace(cfg.eval, seed=cfg.seed, world=str(root / "world"), out=str(root / "eval")),
                root / "eval/config.yaml")
    # 9. The adversarial probes, scored by gold, with the proxy's catch (found.jsonl) for each policy.
    attacks = {}
    for name, path in policies.items():
        out = root / "redteam" / name
        timed(f"redteam {name}", redteam.run, replace(stages["redteam"], model=str(path), out=str(out)),
              done=out / "summary.json")
        attacks[name] = json.loads((out / "summary.json").read_text())
    return {"policies": footing, "redteam": attacks, "audit": _served_audit(cfg, policies, timed)}


def _served_audit(cfg: DemoConfig, policies: dict[str, Path], timed: StageTimer) -> dict:
    """10. The policies served over an OpenAI-compatible API on loopback (`tether serve`) and audited through it like
    any vendor's endpoint (`tether audit`): XSTest's over-refusal and harmful compliance, the two sycophancy
    protocols on the world's held-out facts, style on its held-out prompts."""
    from tether.audit.stage import run as audit
    from tether.serve import ServeConfig, in_background

    root, out = cfg.root, cfg.root / "audit"

    def serve_and_audit() -> None:
        with contextlib.ExitStack() as servers:
            urls = [servers.enter_context(in_background(ServeConfig(model=str(path), name=name)))
                    for name, path in policies.items()]
            audit(replace(cfg.audit, endpoint=urls, names=list(policies), world=str(root / "world"),
                          prompts=str(root / "world/eval.jsonl"), seed=cfg.seed, out=str(out)))

    timed("audit (served)", serve_and_audit, done=out / "audit.json")
    return json.loads((out / "audit.json").read_text())["results"]


def _iterate_phase(cfg: DemoConfig, timed: StageTimer) -> dict:
    """Round 2: the failures round 1's red team and monitor found feed the next comparisons, RM and PPO."""
    if cfg.rounds < 2:
        return {}
    icfg = iterate.IterateConfig(previous=str(cfg.root), collect=cfg.collect, raters=replace(cfg.raters, seed=cfg.seed),
                                 rm=cfg.rm, ppo=cfg.ppo, dpo=cfg.dpo, redteam=cfg.redteam,
                                 eval=replace(cfg.eval, seed=cfg.seed),  # round 1's footing: same draw
                                 resume=cfg.resume)
    if not cfg.resume and (cfg.root / "round2").is_dir():  # an earlier demo's round 2, made from what this run redid
        shutil.rmtree(cfg.root / "round2")
    # 11. Collect from the PPO policy plus the caught failures, label, retrain the RM, PPO again, audit.
    record = timed("round 2", iterate.run_round, icfg, cfg.root, done=cfg.root / "round2/round.json")
    if record is None:  # --resume of a finished round
        record = json.loads((cfg.root / "round2/round.json").read_text())
    return {"round2": record}


def run(cfg: DemoConfig) -> dict:
    """Run the loop; returns the summary also written to `<root>/summary.json`."""
    root = cfg.root
    root.mkdir(parents=True, exist_ok=True)
    save_config(cfg, root / "demo.yaml")
    stages = _stage_configs(cfg)
    timed = StageTimer(cfg.resume, console)
    summary = {**_sft_phase(cfg, stages, timed), **_preference_phase(cfg, stages, timed),
               **_rl_phase(cfg, stages, timed), **_audit_phase(cfg, stages, timed), **_iterate_phase(cfg, timed)}
    summary["timings_s"] = timed.timings
    (root / "summary.json").write_text(json.dumps(summary, indent=1))
    show_summary(summary)
    report = write_report(root)
    console.print(f"stage times (s): {timed.timings}\nwritten to {root}/ (summary.json, eval/, a folder per stage)")
    console.print(f"[bold]report: {report}[/bold]")
    return summary


def show_summary(summary: dict) -> None:
    if summary.get("base_temperature_1"):
        console.print(summary_table(summary["base_temperature_1"],
                                    "Base model, temperature 1: what its distribution can produce"))
    if summary.get("sft_greedy"):
        console.print(summary_table(summary["sft_greedy"],
                                    "SFT policy, greedy, held-out prompts (entities never seen in SFT)"))
    if summary.get("reward_model"):
        console.print(reward_model_table(summary["reward_model"]))
    if summary.get("ppo"):
        console.print(curve_table(summary["ppo"], "PPO against the reward model: proxy and gold on held-out prompts"))
    if summary.get("policies"):
        console.print(policy_table(summary["policies"], summary.get("redteam", {})))
    if summary.get("round2"):
        console.print(iterate.hack_table(summary["round2"]["hacks"], 2))


def policy_table(footing: dict, attacks: dict) -> Table:
    """SFT, PPO and DPO on one footing: gold and behaviour rates on held-out prompts (decoded as `cfg.eval` says),
    harmful requests answered without a refusal, KL to SFT per response (temperature-1 samples), and the red-team
    failure rate (attack success) over all suites."""
    flags = ("correct", "sycophantic", "flattering", "hedged", "padded", "hallucinated", "over_refused")
    how = decoding_label(next(iter(footing.values()), {}).get("decoding"))
    table = Table(title=f"Policies on one footing ({how}, held-out prompts): gold gained for the KL spent")
    columns = ("policy", "gold", "KL k1", "KL k3", *(SHORT.get(f, f) for f in flags), "harm complied", "red-team fail")
    for col in columns:
        table.add_column(col, justify="left" if col == "policy" else "right")
    for name, f in footing.items():
        overall, harmful = f["summary"]["all"], f["summary"].get("harmful")
        fail = attacks.get(name, {}).get("all", {}).get("fail_rate")
        table.add_row(name, f"{overall['gold']:+.2f}", f"{f['kl_k1']:.2f}", f"{f['kl_k3']:.2f}",
                      *(f"{overall[x]:.0%}" for x in flags),
                      "-" if harmful is None else f"{1 - harmful['refused']:.0%}",
                      "-" if fail is None else f"{fail:.0%}")
    return table
