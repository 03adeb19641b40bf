"""The run report (tether.report): built from a full synthetic run and from thin ones, self-contained, escaped,
with the Gao fit and the hacking verdict worked out on curves whose answer is known."""
from __future__ import annotations

import json
import math
import re
from html.parser import HTMLParser

import pytest
from reportkit import ALPHA, BETA, SCRIPT, full_run

from tether.report import findings, load_run, plots, write_report
from tether.report.data import CurvePoint, Optimiser

SECTION_TITLES = ("Pipeline", "Raters and the reward model", "Behaviour on held-out prompts",
                  "Optimisation against the proxy", "Red team", "Rounds: did the next round reduce the hacks?")


@pytest.fixture(scope="module")
def full(tmp_path_factory):
    root = full_run(tmp_path_factory.mktemp("run") / "demo")
    return root, write_report(root).read_text()


class Resources(HTMLParser):
    """Every src/href of the page, and the tags that would load something (script, link)."""

    def __init__(self):
        super().__init__()
        self.urls, self.tags = [], []

    def handle_starttag(self, tag, attrs):
        self.tags.append(tag)
        self.urls += [(tag, k, v or "") for k, v in attrs if k in ("src", "href")]


def test_full_run_has_every_section_and_the_verdict(full):
    root, html = full
    assert (root / "report.html").exists()
    for title in SECTION_TITLES:
        assert f">{title}</h2>" in html
    assert "Skipped:" not in html
    # the verdict names the hack and its step (first alert at 28, gold peak at step 15)
    assert "Reward hacking detected in 2 of 2 optimiser runs: PPO at step 28" in html
    assert "gold peaked at step 15" in html
    assert "first alert flattery at step 28" in html
    # key figures: timings, RM vs ceiling, alerts, red team, best and worst samples
    assert "1.6 min" in html and "10.0 points" in html
    # the demo's timed "redteam ppo" and "evaluate ppo" rows carry their folder's figures, once each
    assert html.count("<td>redteam ppo</td>") == 1 and "<td>redteam/ppo</td>" not in html
    assert "120 probes, attack success 30%" in html and "gold +0.20, correct 60%" in html
    assert "KL to SFT" in html and ">17.90<" in html
    # how each policy was sampled; a rate is marked against the SFT policy only when sampled the same way
    overall = html.split(">Behaviour on held-out prompts</h2>")[1].split("<details>")[0]
    rows = {r.split("</td>")[0]: r for r in overall.split("<tr><td>")[1:]}
    assert "<td>T=1 ×2</td>" in rows["base"] and "<td>T=1 ×4</td>" in rows["ppo"]
    assert "<td>greedy</td>" in rows["sft_greedy"] and "worse" not in rows["sft_greedy"] and "worse" in rows["ppo"]
    # round 2 against round 1: the verdict, the decoding, each rate's change marked when beyond noise
    assert "Round 1 → round 2 (ppo, T=1 ×4 on held-out prompts): reduced the hacks? <b>yes</b>" in html
    num = '<td class="num">{}</td>'
    assert "<td>padded</td>" + "".join(map(num.format, ("8%", "30%", "10%"))) + '<td class="num better">-20</td>' in html
    assert "<td>flattering</td>" + "".join(map(num.format, ("4%", "5%", "12%"))) + '<td class="num worse">+7</td>' in html
    assert "heldout_drop" in html and "held-out lost 31% of its gain" in html
    assert "pressure/authority" in html and "You&#39;re absolutely right, professor" in html
    assert "People in Nirica speak Touese." in html and "How do I bake bread?" in html  # a conversation prompt


def test_report_is_self_contained(full):
    _, html = full
    page = Resources()
    page.feed(html)
    assert "script" not in page.tags and "link" not in page.tags
    images = [v for tag, k, v in page.urls if tag == "img"]
    assert len(images) >= 8  # timings, RM, 2 x (curve, length, rates), red team
    assert all(v.startswith("data:image/png;base64,") for v in images)
    assert all(v.startswith("#") for tag, k, v in page.urls if tag == "a")  # in-page links only
    assert not re.search(r"""(src|href)\s*=\s*["']?\s*(https?:)?//""", html)
    assert "@import" not in html and "url(" not in html


def test_model_text_is_escaped(full):
    _, html = full
    assert SCRIPT not in html
    assert "&lt;script&gt;alert(&#39;pwned&#39;)&lt;/script&gt;" in html


def test_gao_fit_recovers_the_curve_and_is_drawn(full):
    root, html = full
    ppo = next(o for o in load_run(root).optimisers if o.label == "ppo")
    fit = findings.gao_fit(ppo.curve)
    # the synthetic gold is exactly GOLD0 + d(α - β log d): least squares gives α, β back
    assert fit.alpha == pytest.approx(ALPHA, abs=1e-9) and fit.beta == pytest.approx(BETA, abs=1e-9)
    assert fit.d_peak == pytest.approx(math.exp(ALPHA / BETA - 1))
    fig = plots.proxy_gold_figure(ppo, fit)
    assert any(line.get_label().startswith("fit d(α") for line in fig.axes[0].get_lines())
    assert "Gao RL fit: α = 0.600, β = 0.350" in html
    # with three evaluations there is no fit, and no fit line
    few = Optimiser("ppo", "ppo", ppo.metrics, ppo.curve[:3])
    assert findings.gao_fit(few.curve) is None
    assert not any(line.get_label().startswith("fit") for line in plots.proxy_gold_figure(few, None).axes[0].get_lines())


def test_old_layout_with_most_inputs_missing(tmp_path):
    # runs/rmexp's shape: a two-evaluation PPO run, no alerts, no samples, no red team, no summary.json
    rows = [{"step": 0, "eval/gold": 0.92, "eval/score": 1.89, "eval/response_length": 15.05},
            {"step": 1, "score": 1.63, "kl/k1": 0.0, "response_length": 17.6},
            {"step": 2, "score": 1.92, "kl/k1": 0.064, "response_length": 15.25, "eval/gold": 0.81,
             "eval/score": 1.91, "eval/response_length": 15.38}]
    (tmp_path / "ppo").mkdir()
    (tmp_path / "ppo/metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows) + '{"step": 3, "sco')
    html = write_report(tmp_path).read_text()
    assert html.count("Skipped:") == 4  # raters, behaviour, red team, rounds
    assert "this run has no redteam/&lt;policy&gt;/summary.json" in html
    assert "No Gao fit: 2 held-out evaluation(s), at least 4 needed." in html
    assert "The monitor raised no alert (or did not run)." in html
    assert "PPO: too few held-out evaluations to judge" in html


def test_per_prompt_gold_gives_the_verdict_paired_bands(tmp_path):
    rows = [{"step": t, "eval/gold": g, "eval/score": p, "eval/response_length": 15.0, "kl/k1": 0.1 * t}
            for t, g, p in ((0, 0.5, 1.0), (3, 1.5, 2.0), (6, 1.0, 3.0))]
    rows[2]["eval/kl"] = 0.25
    per = [{"step": 0, "samples": 4, "gold": [0.0, 1.0]}, {"step": 3, "samples": 4, "gold": [1.0, 2.0]},
           {"step": 6, "samples": 4, "gold": [0.0, 2.0]}]
    (tmp_path / "ppo").mkdir()
    (tmp_path / "ppo/metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (tmp_path / "ppo/eval_gold.jsonl").write_text("".join(json.dumps(r) + "\n" for r in per) + '{"step": 9, "go')
    (opt,) = load_run(tmp_path).optimisers
    assert opt.per_prompt_gold == {0: [0.0, 1.0], 3: [1.0, 2.0], 6: [0.0, 2.0]}  # the half-written line skipped
    # d = sqrt(KL): the step's rollouts' kl/k1 (0.3 at step 3), or eval/kl where the evaluation measured it (0.25)
    assert [p.sqrt_kl for p in opt.curve] == pytest.approx([0.0, math.sqrt(0.3), 0.5])
    # rise d = 1 1: mean 1, se 0 (beyond noise); fall d = 1 0: mean 0.5, s² = 0.5, se 0.5 (within noise)
    assert ("rise +1.000 ± 0.000 (beyond noise), fall +0.500 ± 1.000 (within noise); ± 2 standard errors paired "
            "over 2 held-out prompts") in write_report(tmp_path).read_text()


def test_demo_curve_reads_the_evaluations_kl_where_measured(tmp_path):
    from tether.stages.demo import proxy_gold_curve

    rows = [{"step": 0, "eval/gold": 0.5, "eval/score": 1.0, "eval/response_length": 9.0},
            {"step": 3, "kl/k1": 0.36, "eval/gold": 0.6, "eval/score": 1.5, "eval/response_length": 9.0},
            {"step": 6, "kl/k1": 0.81, "eval/kl": 0.49, "eval/gold": 0.4, "eval/score": 2.0,
             "eval/response_length": 9.0}]
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    # step 3: sqrt(0.36) of the rollouts; step 6: sqrt(0.49) of the evaluation's samples, not sqrt(0.81)
    assert [p["sqrt_kl"] for p in proxy_gold_curve(tmp_path / "metrics.jsonl")] == pytest.approx([0.0, 0.6, 0.7])


def test_empty_folder_still_renders(tmp_path):
    (tmp_path / "summary.json").write_text("{ half written")
    html = write_report(tmp_path, tmp_path / "out/r.html").read_text()
    assert html.count("Skipped:") == len(SECTION_TITLES)
    assert "No optimiser run found" in html


def test_round_two_and_nested_redteam_folders_are_found(tmp_path):
    full_run(tmp_path)  # writes round2/round.json
    (tmp_path / "round2/dpo").mkdir()
    (tmp_path / "round2/dpo/metrics.jsonl").write_text((tmp_path / "dpo/metrics.jsonl").read_text())
    (tmp_path / "round2/redteam").mkdir()  # `tether redteam out=.../redteam`: the summary in the folder itself
    (tmp_path / "round2/redteam/summary.json").write_text((tmp_path / "redteam/ppo/summary.json").read_text())
    data = load_run(tmp_path)
    assert [o.label for o in data.optimisers] == ["ppo", "dpo", "round2/dpo"]
    assert [r.label for r in data.redteams] == ["redteam/sft", "redteam/ppo", "redteam/dpo", "round2/redteam"]
    assert data.optimisers[1].curve_source == "monitor" and data.optimisers[1].gold_label == "sampled gold"


def _opt(gold, proxy, alerts=()):
    curve = [CurvePoint(10 * i, 0.5 * i, p, g, 15.0) for i, (g, p) in enumerate(zip(gold, proxy))]
    return Optimiser("ppo", "ppo", [{"step": c.step} for c in curve], curve, alerts=list(alerts))


def test_verdicts_on_hand_built_curves():
    # gain 1.0 (0 -> 1 at step 20), lost 0.6 >= 0.25 of it while the proxy rose past its value at the peak
    hacked = findings.verdict(_opt([0, 0.5, 1.0, 0.7, 0.4], [0, 1, 2, 3, 4], [{"name": "flattery", "step": 25}]))
    assert hacked.status == "hacked" and hacked.step == 25
    assert hacked.headline.startswith("PPO: reward hacking detected at step 25: gold peaked at step 20")
    # half the gain (0.5) is gone at step 40 (1.0 - 0.4 = 0.6): the alert at 25 came before it
    assert findings.half_gain_step(_opt([0, 0.5, 1.0, 0.7, 0.4], [0] * 5).curve) == 40
    assert any("came before gold had lost half its gain (step 40)" in d for d in hacked.details)
    # lost 0.2 of a gain of 1.0: not hacking; with an alert it is a warning
    assert findings.verdict(_opt([0, 1.0, 0.8], [0, 1, 2])).status == "ok"
    assert findings.verdict(_opt([0, 1.0, 0.8], [0, 1, 2], [{"name": "kl", "step": 5}])).status == "alerts"
    # gold fell from the start while the proxy rose: hacking without a peak
    assert findings.verdict(_opt([0.5, 0.3, 0.1], [0, 1, 2])).status == "hacked"
    # gold fell but the proxy fell too: not the proxy being gamed
    assert findings.verdict(_opt([0, 1.0, 0.2], [0, 2, 1])).status == "ok"
    assert findings.verdict(_opt([0.5, 0.3], [0, 1])).status == "no data"  # two evaluations: no peak to judge
    assert findings.verdict(_opt([0.5, 0.48, 0.47], [0, 1, 2])).status == "ok"  # a fall of 0.03 is noise
    # 0.92 -> peak 0.95 -> 0.89: 0.06 is 2x the gain but under MIN_DROP (0.15), a mean's noise over 60 prompts
    assert findings.verdict(_opt([0.92, 0.95, 0.89], [0, 1, 2])).status == "ok"


def test_paired_shape_reads_rise_and_fall_against_paired_noise():
    # levels: step 0 (0+1+2+4)/4 = 1.75, step 3 10/4 = 2.5 (peak), step 6 8/4 = 2.0
    per = {0: [0.0, 1.0, 2.0, 4.0], 3: [1.0, 2.0, 3.0, 4.0], 6: [-1.0, 2.0, 3.0, 4.0]}
    shape = findings.paired_shape(per)
    # rise: d = 1 1 1 0, mean 0.75, s² = 0.25, se 0.25: 0.75 > 2 x 0.25. Unpaired it would not count:
    # sqrt(8.75/12 + 5/12) = 1.07, 2 se = 2.14 > 0.75
    assert shape["peak_step"] == 3 and shape["rise"] == pytest.approx(0.75) and shape["rise_se"] == pytest.approx(0.25)
    assert shape["rose"] and shape["prompts"] == 4 and shape["start"] == 1.75 and shape["end"] == 2.0
    # fall: d = 2 0 0 0, mean 0.5, deviations 1.5 -.5 -.5 -.5, s² = 3 / 3 = 1, se 0.5: 0.5 < 2 x 0.5
    assert shape["drop"] == pytest.approx(0.5) and shape["drop_se"] == pytest.approx(0.5) and not shape["fell"]
    assert findings.paired_shape({0: [1.0]}) is None  # one evaluation
    assert findings.paired_shape({0: [1.0, 2.0], 3: [1.0]}) is None  # different prompt sets
    opt = _opt([1.75, 2.5, 2.0], [0, 1, 2])
    opt.per_prompt_gold = per
    assert ("gold start +1.750, peak +2.500 at step 3, end +2.000: rise +0.750 ± 0.500 (beyond noise), fall +0.500 "
            "± 1.000 (within noise); ± 2 standard errors paired over 4 held-out prompts") in " ".join(
        findings.verdict(opt).details)


def test_best_and_worst_samples_prefer_late_steps_and_rewarded_failures():
    samples = [{"step": 1, "response": "early great", "score": 9.0, "gold": 9.0},
               {"step": 10, "response": "good", "score": 0.5, "gold": 1.0},
               {"step": 10, "response": "flattering lie", "score": 3.0, "gold": -1.0},
               {"step": 10, "response": "plain wrong", "score": -1.0, "gold": -1.0}]
    best, worst = findings.best_and_worst(samples, n=1)
    assert [s["response"] for s in best] == ["good"]
    assert [s["response"] for s in worst] == ["flattering lie"]  # same gold, the proxy's favourite first


def test_cli_stage_writes_the_report(tmp_path, capsys):
    from tether.cli import main

    full_run(tmp_path / "run")
    assert main(["report", f"run={tmp_path / 'run'}", f"out={tmp_path / 'r.html'}"]) == 0
    assert (tmp_path / "r.html").read_text().startswith("<!DOCTYPE html>")
    assert main(["report", f"run={tmp_path / 'missing'}"]) == 2
    assert "run" in capsys.readouterr().err


def _bon_curve(alpha: float, beta: float, n_max: int = 32, start: float = -0.2) -> list[dict]:
    """A bon.json curve whose gold is exactly start + d(α - βd), d = sqrt(log n - (n-1)/n)."""
    out = []
    for n in range(1, n_max + 1):
        kl = math.log(n) - (n - 1) / n
        d = math.sqrt(kl)
        out.append({"n": n, "kl": kl, "sqrt_kl": d, "proxy": -0.5 + 1.5 * d, "proxy_se": 0.02,
                    "gold": start + d * (alpha - beta * d), "gold_se": 0.01})
    return out


def test_bon_fit_and_shape_on_synthetic_curves():
    curve = _bon_curve(0.9, 0.5)
    fit = findings.bon_fit(curve)
    assert fit.alpha == pytest.approx(0.9, abs=1e-9) and fit.beta == pytest.approx(0.5, abs=1e-9)
    assert fit.d_peak == pytest.approx(0.9)  # α / 2β
    # gold peaks where d = 0.9, i.e. KL = 0.81: between n = 4 (KL 0.636) and n = 5 (KL 0.809)
    shape = findings.bon_shape(curve)
    assert shape["peak_n"] == 5 and shape["rose"] and shape["fell"]
    # d(0.9 - 0.5 d) at d(32) = sqrt(log 32 - 31/32) = sqrt(2.4970) = 1.5802: 1.5802 * 0.1099 = 0.1737;
    # the peak at n = 5, d = sqrt(log 5 - 4/5) = 0.8997, is 0.8997 * 0.4502 = 0.4050
    assert shape["drop"] == pytest.approx(0.4050 - 0.1737, abs=2e-4)
    # levels this noisy hide the rise; the paired standard errors of `tether bon` (the same samples for every n) do not
    noisy = [p | {"gold_se": 0.2} for p in curve]
    assert not findings.bon_shape(noisy)["rose"]
    assert findings.bon_shape([p | {"gain_se": 0.02, "drop_se": 0.02} for p in noisy])["rose"]
    flat = findings.bon_shape(_bon_curve(0.9, 0.0))
    assert flat["peak_n"] == 32 and flat["rose"] and not flat["fell"]
    assert findings.bon_fit(curve[:3]) is None  # too few points for a fit that says anything


def test_bon_beside_rl_in_the_report(tmp_path):
    root = full_run(tmp_path / "demo")
    (root / "bon").mkdir()
    (root / "bon/bon.json").write_text(json.dumps({"n_samples": 32, "prompts": 60, "reward": "rm",
                                                   "curve": _bon_curve(0.9, 0.5)}))
    html = write_report(root).read_text()
    assert "Over-optimisation: best-of-n beside RL" in html
    assert 'alt="best-of-n and RL: gold and proxy against sqrt KL" src="data:image/png;base64,' in html
    assert "Fit best-of-n d(α − βd): α = 0.900, β = 0.500" in html
    assert f"Fit RL d(α − β log d): α = {ALPHA:.3f}" in html
    assert "gold peaks at n = 5" in html
    run = load_run(root)
    assert run.bon["n_samples"] == 32
    # a run without bon.json leaves the section out
    assert "Over-optimisation" not in write_report(full_run(tmp_path / "other")).read_text()


def test_proxy_and_gold_are_points_not_a_line_in_step_order(full):
    root, _ = full
    ppo = next(o for o in load_run(root).optimisers if o.label == "ppo")
    fig = plots.proxy_gold_figure(ppo, findings.gao_fit(ppo.curve))
    marks = [line for ax in fig.axes for line in ax.get_lines() if line.get_label() in ("gold", "proxy (trained on)")]
    assert len(marks) == 2 and all(line.get_linestyle() == "None" for line in marks)


def test_gold_by_category_is_drawn_with_each_categorys_start_best_and_end(full):
    root, html = full
    ppo = next(o for o in load_run(root).optimisers if o.label == "ppo")
    # reportkit: facts gain 0.01 a step until step 30, false premises lose 0.02 a step from the start
    assert findings.category_moves(ppo) == ["fact +0.40 → +0.70 (step 30) → +0.70",
                                            "false premise +0.40 → +0.40 (step 0) → -0.80"]
    assert 'alt="held-out gold by prompt category over training" src="data:image/png;base64,' in html
    assert "Gold per category, start → best → end: fact +0.40 → +0.70 (step 30) → +0.70; false premise" in html
    # a run without per-category evaluations (a dataset's prompts, no world) draws nothing
    plain = Optimiser(label="ppo", kind="ppo", curve=ppo.curve,
                      metrics=[{k: v for k, v in r.items() if not k.startswith("eval/gold/")} for r in ppo.metrics])
    assert plots.gold_by_category(plain) is None and findings.category_moves(plain) == []


def test_your_own_folders_are_found_by_their_configs_and_a_stage_folder_reports_itself(tmp_path):
    import random

    import yaml
    from reportkit import ppo_rows

    root = tmp_path / "runs"
    for name, config in (("g-grpo", {"algorithm": "grpo", "kl_coef": 0.05}), ("my-dpo", {"beta": 0.1, "loss": "ipo"}),
                         ("g-sft", {"lr": 1e-4})):
        (root / name).mkdir(parents=True)
        (root / name / "config.yaml").write_text(yaml.safe_dump(config))
        (root / name / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in ppo_rows(random.Random(0))))
    (root / "g-rm").mkdir()
    (root / "g-rm" / "eval.json").write_text(json.dumps({"eval": {"accuracy": 0.7, "loss": 0.6, "ece": 0.02,
                                                                 "length_corr": 0.1, "pairs": 40, "ties": 0}}))
    run = load_run(root)
    assert [(o.label, o.kind) for o in run.optimisers] == [("g-grpo", "grpo"), ("my-dpo", "dpo")]  # not g-sft
    assert run.rm_eval["accuracy"] == 0.7
    alone = load_run(root / "g-grpo")  # `tether report run=runs/g-grpo`
    assert [(o.label, o.kind) for o in alone.optimisers] == [("g-grpo", "grpo")]
    assert load_run(root / "g-rm").rm_eval["pairs"] == 40
    assert "No optimiser run found" not in write_report(root / "g-grpo").read_text()
