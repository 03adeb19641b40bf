"""tether.tracking: `report_to` trackers get exactly metrics.jsonl's rows (names, steps, values), read back with
each library's own reader (TensorBoard's EventAccumulator, MLflow's MlflowClient); resume; config errors.

Tiny runs: SFT, DPO, KTO, RM and GRPO on the "test" preset and the tiny world, 2-4 steps.
"""
import json
import sys

import numpy as np
import pytest

from tether import distributed, tracking
from tether.config import load_config
from tether.errors import ConfigError
from tether.stages import dpo, lm, rm, sft
from tether.stages.dpo import DPOConfig
from tether.training import MetricsLog
from tether.stages.ppo import GRPOConfig
from tether.stages.ppo import run as run_online
from tether.stages.rm import RMConfig
from tether.stages.sft import SFTConfig

pytest.importorskip("tensorboard")
pytest.importorskip("mlflow")

from mlflow.tracking import MlflowClient  # noqa: E402
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator  # noqa: E402
from tensorboard.plugins.hparams import plugin_data_pb2  # noqa: E402

BOTH = "report_to=tensorboard,mlflow"


def sft_overrides(world_dir, model_dir, out, *extra) -> list[str]:
    return [f"data={world_dir}/sft.jsonl", f"model={model_dir}", f"out={out}", "max_steps=3", "batch_size=4",
            "micro_batch_size=4", "max_length=64", "eval_fraction=0.1", "eval_every=2", "log_every=1", "save_every=0",
            "warmup_steps=1", "lr=3e-3", *extra]


def jsonl_series(out) -> dict[str, list[tuple[int, float]]]:
    """metrics.jsonl as {name: [(step, value)]}, numbers only (None and text are never tracked)."""
    series: dict[str, list] = {}
    for line in (out / "metrics.jsonl").read_text().splitlines():
        row = json.loads(line)
        for name, value in row.items():
            if name != "step" and isinstance(value, (int, float)):
                series.setdefault(name, []).append((row["step"], float(value)))
    return series


def tensorboard_series(out) -> dict[str, list[tuple[int, float]]]:
    events = EventAccumulator(str(out / "tensorboard"), size_guidance={"scalars": 0})
    events.Reload()
    return {tag: [(e.step, e.value) for e in events.Scalars(tag)] for tag in events.Tags()["scalars"]}


def float32(series: dict) -> dict:
    """TensorBoard keeps scalars as float32."""
    return {name: [(step, float(np.float32(v))) for step, v in points] for name, points in series.items()}


def mlflow_runs(out) -> tuple[MlflowClient, list]:
    """The runs of out/mlruns, oldest first."""
    client = MlflowClient(tracking_uri=f"sqlite:///{out / 'mlruns' / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("tether")
    return client, client.search_runs([experiment.experiment_id], order_by=["attributes.start_time ASC"])


def mlflow_series(client: MlflowClient, run) -> dict[str, list[tuple[int, float]]]:
    return {name: sorted((m.step, m.value) for m in client.get_metric_history(run.info.run_id, name))
            for name in run.data.metrics}


def test_sft_run_reports_its_metrics_jsonl_to_tensorboard_and_mlflow(tmp_path, world_dir, model_dir):
    cfg = load_config(SFTConfig, overrides=sft_overrides(world_dir, model_dir, tmp_path, BOTH, "run_name=tiny-sft"))
    sft.run(cfg)
    expected = jsonl_series(tmp_path)
    assert [s for s, _ in expected["loss"]] == [1, 2, 3] and [s for s, _ in expected["eval_loss"]] == [2, 3]
    assert {"lr", "grad_norm", "tokens", "epoch", "tokens_per_s", "nonfinite_skips"} <= set(expected)
    # TensorBoard: every series, float32-exact; the config as hparams in the run's own event file.
    assert tensorboard_series(tmp_path) == float32(expected)
    events = EventAccumulator(str(tmp_path / "tensorboard"))
    events.Reload()
    content = events.PluginTagToContent("hparams")["_hparams_/session_start_info"]
    hparams = plugin_data_pb2.HParamsPluginData.FromString(content).session_start_info.hparams
    assert hparams["lr"].number_value == 3e-3 and hparams["report_to"].string_value == "tensorboard,mlflow"
    assert hparams["lora.r"].number_value == 0 and "run_name" in hparams
    # MLflow: one finished run named run_name, every series exact, the config as params.
    client, runs = mlflow_runs(tmp_path)
    assert len(runs) == 1 and runs[0].info.run_name == "tiny-sft" and runs[0].info.status == "FINISHED"
    assert mlflow_series(client, runs[0]) == expected
    params = runs[0].data.params
    assert (params["lr"], params["max_steps"], params["lora.target_modules"], params["resume"]) == (
        "0.003", "3", "all-linear", "False")


def test_grpo_run_reports_the_same_names_and_steps_including_evaluations(tmp_path, world_dir, model_dir):
    cfg = GRPOConfig(model=str(model_dir), prompts=str(world_dir / "prompts.jsonl"), reward="gold",
                     world=str(world_dir), max_new_tokens=8, rollout_batch=2, group_size=2, minibatch_size=4,
                     micro_batch_size=2, ppo_epochs=1, max_steps=2, eval_every=0, eval_prompts=4, sample_every=0,
                     save_every=0, out=str(tmp_path), report_to=["tensorboard", "mlflow"])
    cfg.validate()
    run_online(cfg)
    expected = jsonl_series(tmp_path)
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    # The evaluation of the initial policy at step 0 and of the last; value metrics are null without a critic.
    assert [s for s, _ in expected["eval/gold"]] == [0, 2] and [s for s, _ in expected["kl/k1"]] == [1, 2]
    assert all(r["value_loss"] is None for r in rows[1:]) and "value_loss" not in expected
    assert any(name.startswith("monitor/") for name in expected)
    assert tensorboard_series(tmp_path) == float32(expected)
    client, runs = mlflow_runs(tmp_path)
    assert len(runs) == 1 and mlflow_series(client, runs[0]) == expected
    assert runs[0].info.run_name == tmp_path.name and runs[0].data.params["algorithm"] == "grpo"


def comparisons(path) -> str:
    """16 labelled comparisons over 8 prompts; the right answer wins."""
    rows = [{"prompt": f"What is the capital of land {i % 8}?", "response_a": f"The capital is Osk {i % 8}.",
             "response_b": "I do not know.", "choice": "A"} for i in range(16)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


@pytest.mark.parametrize("stage", ["dpo", "kto", "rm"])
def test_preference_stages_report_their_metrics_jsonl(stage, tmp_path, model_dir):
    """DPO and KTO (through dpo's loop) and the reward model: the same hook, so TensorBoard alone suffices here."""
    common = dict(data=comparisons(tmp_path / "prefs.jsonl"), out=str(tmp_path / "run"), batch_size=4,
                  micro_batch_size=4, max_steps=2, eval_fraction=0.25, eval_every=2, log_every=1, save_every=0,
                  warmup_steps=1, max_length=64, report_to=["tensorboard"])
    if stage == "rm":
        cfg = RMConfig(model=str(model_dir), **common)
    else:
        cfg = DPOConfig(model=str(model_dir), loss="sigmoid" if stage == "dpo" else "kto", kl_eval_prompts=0,
                        **common)
    cfg.validate()
    (rm.run if stage == "rm" else dpo.run)(cfg)
    expected = jsonl_series(tmp_path / "run")
    assert [s for s, _ in expected["loss"]] == [1, 2] and [s for s, _ in expected["eval_loss"]] == [2]
    if stage == "dpo":
        assert "rewards/margins" in expected
    assert tensorboard_series(tmp_path / "run") == float32(expected)


class Killed(Exception):
    pass


def test_resumed_sft_run_logs_no_step_twice(tmp_path, world_dir, model_dir, monkeypatch):
    """Stopped by an error during step 4 (steps 1-3 logged, checkpoint at 2), then resumed: TensorBoard shows each
    step once, with the resumed run's values; MLflow keeps the failed run and a new run from step 3 on."""
    overrides = sft_overrides(world_dir, model_dir, tmp_path, BOTH, "max_steps=4", "save_every=2", "eval_every=0")
    real_lr_at = lm.lr_at

    def lr_dying_at_step_4(step, *args):
        if step == 3:
            raise Killed
        return real_lr_at(step, *args)

    with monkeypatch.context() as patch:
        patch.setattr(lm, "lr_at", lr_dying_at_step_4)
        with pytest.raises(Killed):
            sft.run(load_config(SFTConfig, overrides=overrides))
    tracking.finish_open()  # what exit does in a process that dies of the error
    client, (killed,) = mlflow_runs(tmp_path)
    before = mlflow_series(client, killed)
    assert [s for s, _ in before["loss"]] == [1, 2, 3]
    sft.run(load_config(SFTConfig, overrides=[*overrides, "resume=true"]))
    expected = jsonl_series(tmp_path)
    assert [s for s, _ in expected["loss"]] == [1, 2, 3, 4]
    assert tensorboard_series(tmp_path) == float32(expected)
    client, runs = mlflow_runs(tmp_path)
    assert [(r.info.run_name, r.info.status) for r in runs] == [(tmp_path.name, "FAILED"),
                                                                 (f"{tmp_path.name}-resumed-2", "FINISHED")]
    assert mlflow_series(client, runs[0]) == before
    resumed = {name: [(step, v) for step, v in points if step > 2] for name, points in expected.items()}
    assert mlflow_series(client, runs[1]) == resumed


def test_a_resumed_mlflow_run_marks_the_one_left_running_as_killed(tmp_path):
    """A SIGKILLed process never finishes its run: the resumed one says so."""
    killed = tracking.MLflowRun(tmp_path, "a", {"lr": 0.5}, 0)
    killed.log({"loss": 2.0}, 1)
    resumed = tracking.MLflowRun(tmp_path, "a-resumed-1", {"lr": 0.5}, 1)
    resumed.finish(ok=True)
    client, runs = mlflow_runs(tmp_path)
    assert [(r.info.run_name, r.info.status) for r in runs] == [("a", "KILLED"), ("a-resumed-1", "FINISHED")]
    assert runs[1].data.tags["tether.resumed_from_step"] == "1" and runs[0].data.params == {"lr": "0.5"}


def test_only_rank_0_starts_trackers(tmp_path, monkeypatch):
    monkeypatch.setattr(distributed, "is_main", lambda: False)
    log = MetricsLog(tmp_path / "metrics.jsonl", 0, SFTConfig(out=str(tmp_path), report_to=["tensorboard"]))
    log.write({"step": 1, "loss": 1.0})
    log.close()
    assert list(tmp_path.iterdir()) == []


def test_rows_give_numbers_only_and_configs_flat_params():
    row = {"step": 3, "loss": 1.5, "gold": None, "tokens": 7, "note": "text", "hist": [1, 2], "stopped": True}
    assert tracking.numeric(row) == {"loss": 1.5, "tokens": 7.0, "stopped": 1.0}
    params = tracking.flat_params(SFTConfig(report_to=["tensorboard", "mlflow"], lr=0.5))
    assert (params["report_to"], params["lr"], params["lora.r"], params["lora.target_modules"]) == (
        "tensorboard,mlflow", 0.5, 0, "all-linear")
    assert params["run_name"] is None and "lora" not in params


@pytest.mark.parametrize("cls", [SFTConfig, GRPOConfig])
def test_unknown_or_repeated_tracker_is_a_config_error(cls):
    with pytest.raises(ConfigError, match=r"^\w+Config\.report_to: unknown tracker 'tensorbord'; choose from "
                                          r"tensorboard, mlflow, wandb, trackio$"):
        load_config(cls, overrides=["report_to=tensorboard,tensorbord"])
    with pytest.raises(ConfigError, match="report_to: names a tracker twice"):
        load_config(cls, overrides=["report_to=mlflow,mlflow"])
    assert load_config(cls).report_to == []  # the default: metrics.jsonl only


@pytest.mark.parametrize("name", ["wandb", "trackio"])
def test_uninstalled_tracker_stops_at_validation_and_at_run_start(name, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, name, None)  # `import name` fails, as when the package is absent
    message = f"report_to: '{name}' needs the {name} package: pip install {name}"
    with pytest.raises(ConfigError, match=f"^SFTConfig.{message}$"):
        load_config(SFTConfig, overrides=[f"report_to={name}"])
    # A config that skipped validation stops when the run starts, and a tracker started before it is closed.
    cfg = SFTConfig(out=str(tmp_path), report_to=["tensorboard", name])
    with pytest.raises(ConfigError, match=f"^{message} "):
        MetricsLog(tmp_path / "metrics.jsonl", 0, cfg)
