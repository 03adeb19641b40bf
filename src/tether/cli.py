"""The `tether` command: `tether STAGE [--config FILE.yaml] [--resume] [key=value ...]`.

Thin on purpose: find the stage, load its config (defaults < YAML < overrides, then `validate()`),
call `run(cfg)`. Stage modules are imported only when their stage is asked for, so `tether --help`
is fast (no torch import) and still works while a stage module is missing or broken.
A `TetherError` (bad config, bad data, bad command line) prints `error: <message>` and exits 2.
"""

from __future__ import annotations

import argparse
import dataclasses
import difflib
import importlib
import os
import sys
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple, NoReturn

from tether import __version__
from tether.config import config_help, load_config
from tether.errors import TetherError

__all__ = ["COMMANDS", "STAGES", "Stage", "UsageError", "main"]


class Stage(NamedTuple):
    """Where a stage lives; nothing is imported until the stage runs or shows its help."""

    module: str
    """Dotted module path, e.g. "tether.stages.sft"."""
    config: str
    """Name of the config dataclass in that module."""
    function: str
    """Name of the function called as `fn(cfg)`."""
    summary: str
    """One line for `tether --help`."""


STAGES: dict[str, Stage] = {
    "world": Stage("tether.world.build", "WorldConfig", "run", "Write the tiny assistant world (corpus, SFT demos, eval prompts) to a folder."),
    "tokenizer": Stage("tether.tokenizer", "TokenizerConfig", "run", "Train a byte-level BPE tokenizer with a chat template."),
    "pretrain": Stage("tether.stages.pretrain", "PretrainConfig", "run", "Causal-LM pretraining on a text/chat corpus."),
    "sft": Stage("tether.stages.sft", "SFTConfig", "run", "Supervised fine-tuning on conversations, loss on assistant tokens only."),
    "collect": Stage("tether.stages.collect", "CollectConfig", "run", "Sample responses from policies and pair them into a comparison queue."),
    "label": Stage("tether.stages.label", "LabelConfig", "run", "Label a comparison queue with the world's simulated raters."),
    "judge": Stage("tether.stages.judge", "JudgeConfig", "run", "Label a comparison queue with an AI judge under a constitution (model, endpoint or the world's simulated judge)."),
    "cai": Stage("tether.stages.cai", "CaiConfig", "run", "Constitutional AI, supervised stage: a model critiques and revises its own responses under sampled principles; the revisions become SFT data."),
    "hybrid": Stage("tether.stages.hybrid", "HybridConfig", "run", "Hybrid labels: a judge's unsure pairs to people (a rater-app queue), its other labels kept; merge people's ratings in."),
    "rm": Stage("tether.stages.rm", "RMConfig", "run", "Train a Bradley-Terry reward model on preference comparisons."),
    "ppo": Stage("tether.stages.ppo", "PPOConfig", "run", "PPO against a reward model (or gold, or a callable) with a KL penalty to the SFT policy."),
    "grpo": Stage("tether.stages.ppo", "GRPOConfig", "run", "GRPO: group-normalised advantages, KL to the reference in the loss."),
    "rloo": Stage("tether.stages.ppo", "RLOOConfig", "run", "RLOO: leave-one-out baseline, KL penalty in the reward."),
    "dpo": Stage("tether.stages.dpo", "DPOConfig", "run", "Direct preference optimisation (DPO, IPO, cDPO, robust DPO, SimPO) on comparisons; KTO on thumbs-up/down rows."),
    "bon": Stage("tether.stages.bon", "BoNConfig", "run", "Best-of-n: n samples per prompt scored by a reward source, the best kept; the proxy and gold curve over n."),
    "evaluate": Stage("tether.stages.evaluate", "EvalConfig", "run", "Evaluate a policy on the world's held-out prompts with the gold reward."),
    "redteam": Stage("tether.stages.redteam", "RedteamConfig", "run", "Red-team a policy: jailbreak, pressure, pushback and over-refusal probes; proxy-vs-gold search."),
    "demo": Stage("tether.stages.demo", "DemoConfig", "run", "Run the whole loop on the tiny assistant world."),
    "iterate": Stage("tether.stages.iterate", "IterateConfig", "run", "One more round: failure prompts -> collect -> raters -> RM -> PPO or DPO -> audit."),
    "report": Stage("tether.stages.report", "ReportConfig", "run", "Write a run folder's report.html: stages, RM vs raters, proxy vs gold, alerts, red team."),
    "audit": Stage("tether.audit", "AuditConfig", "run", "Audit models or endpoints side by side: over-refusal and harmful compliance (XSTest), sycophancy, style, on your prompts."),
    "serve": Stage("tether.serve", "ServeConfig", "run", "Serve a model folder over an OpenAI-compatible HTTP API (chat, completions, streaming)."),
}  # fmt: skip

COMMANDS: dict[str, tuple[str, str]] = {
    "raters": ("tether.raters.cli", "The rater web app: init | add-rater | import | export | serve ('tether raters --help')."),
    "data": ("tether.data.cli", "Data files: convert between TRL, HH-RLHF, UltraFeedback, tether, Parquet ('tether data --help')."),
}
"""Commands with their own sub-commands and options: name -> (module with `main(argv) -> int`, summary)."""

USAGE = "tether STAGE [--config FILE.yaml] [--resume] [key=value ...]"

DISTRIBUTED = ("pretrain", "sft", "rm", "dpo", "ppo", "grpo", "rloo")
"""The stages that run under `torchrun --nproc_per_node N` (tether.distributed); the others run as one process."""


class UsageError(TetherError):
    """The command line itself is wrong: unknown stage or option, unavailable stage module."""


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `tether` console script; returns the exit status."""
    args = list(sys.argv[1:] if argv is None else argv)
    try:
        return _dispatch(args)
    except TetherError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


def entry(argv: Sequence[str] | None = None) -> int:
    """The `tether` console script and `python -m tether`: `main`, then, after a command that succeeded under
    torchrun, every rank leaves the process group together (`tether.distributed.finish`: a barrier, so no rank tears
    its connections down while another still writes, then destroy) instead of at interpreter exit. Scripts that run
    several stages in the same processes call `main` for each, and `finish` after the last."""
    try:
        code = main(argv)
    except BrokenPipeError:  # `tether sft --help | head`: the reader left; no traceback (Python's signal docs)
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # nothing more to flush at exit
        return 1
    if code == 0 and "torch.distributed" in sys.modules:  # never import torch for a command that did not
        from tether.distributed import finish
        finish()
    return code


def _dispatch(args: list[str]) -> int:
    if not args:
        print(top_help(), file=sys.stderr)
        return 2
    if args[0] in ("-h", "--help"):
        print(top_help())
        return 0
    if args[0] == "--version":
        print(f"tether {__version__}")
        return 0
    name, rest = args[0], args[1:]
    if name in COMMANDS:
        return importlib.import_module(COMMANDS[name][0]).main(rest)
    stage = _find_stage(name)
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and name not in DISTRIBUTED:
        raise UsageError(f"stage {name!r} runs as one process, not under torchrun with several; "
                         f"the stages that do: {', '.join(DISTRIBUTED)}")
    options = _parse_stage_args(name, rest)
    config_cls, fn = _import_stage(name, stage)
    if options.help:
        print(stage_help(name, stage, config_cls))
        return 0
    overrides = list(options.overrides)
    if options.resume:
        if "resume" not in {f.name for f in dataclasses.fields(config_cls)}:
            raise UsageError(f"stage {name!r} does not support --resume ({config_cls.__name__} has no 'resume' field)")
        overrides.append("resume=true")  # last, so it wins over a resume=false override
    cfg = load_config(config_cls, options.config, overrides)
    fn(cfg)
    return 0


def _find_stage(name: str) -> Stage:
    if name in STAGES:
        return STAGES[name]
    if name.startswith("-"):
        raise UsageError(f"expected a stage first, got option {name!r}; usage: {USAGE}")
    close = difflib.get_close_matches(name, list(STAGES) + list(COMMANDS), n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    raise UsageError(f"unknown stage {name!r}{hint}; stages: {', '.join(STAGES)}")


class _Parser(argparse.ArgumentParser):
    """argparse that raises UsageError instead of printing its own message and exiting."""

    def error(self, message: str) -> NoReturn:
        raise UsageError(f"{self.prog}: {message}; usage: {self.prog} [--config FILE.yaml] [--resume] [key=value ...]")


def _parse_stage_args(name: str, rest: list[str]) -> argparse.Namespace:
    parser = _Parser(prog=f"tether {name}", add_help=False, allow_abbrev=False)
    parser.add_argument("-h", "--help", action="store_true")
    parser.add_argument("--config", metavar="FILE.yaml")
    parser.add_argument("--resume", action="store_true")
    parser.add_argument("overrides", nargs="*", metavar="key=value")
    # intermixed: `tether sft lr=1 --config a.yaml epochs=2` keeps both overrides
    return parser.parse_intermixed_args(rest)


def _import_stage(name: str, stage: Stage) -> tuple[type, Callable[[Any], Any]]:
    try:
        module = importlib.import_module(stage.module)
    except ModuleNotFoundError as err:
        # Only the stage's own module being absent is a usage problem; a missing dependency
        # deeper down is a bug or a broken install and keeps its traceback.
        if err.name and (stage.module == err.name or stage.module.startswith(err.name + ".")):
            raise UsageError(f"stage {name!r} is not available: module {stage.module} not found") from None
        raise
    missing = [attr for attr in (stage.config, stage.function) if not hasattr(module, attr)]
    if missing:
        raise UsageError(f"stage {name!r} is not available: {stage.module} has no {', '.join(missing)}")
    return getattr(module, stage.config), getattr(module, stage.function)


def top_help() -> str:
    """`tether --help`: usage and the stage list; imports no stage module."""
    width = max(len(name) for name in list(STAGES) + list(COMMANDS))
    lines = [f"usage: {USAGE}", "", "stages:"]
    lines += [f"  {name:<{width}}  {stage.summary}" for name, stage in STAGES.items()]
    lines += ["", "commands:"]
    lines += [f"  {name:<{width}}  {summary}" for name, (_, summary) in COMMANDS.items()]
    lines += [
        "",
        "options:",
        "  --config FILE.yaml  read settings from a YAML mapping",
        "  --resume            continue the run in the config's run folder (stages with a 'resume' field)",
        "  key=value           override one setting; nested settings are dotted: optim.lr=3e-4",
        "",
        "Settings apply in order: defaults, then --config, then key=value overrides.",
        "Run 'tether STAGE --help' to list a stage's settings.",
    ]
    return "\n".join(lines)


def stage_help(name: str, stage: Stage, config_cls: type) -> str:
    """`tether STAGE --help`: the summary and every setting with its type, default and docstring."""
    return "\n".join(
        [
            f"usage: tether {name} [--config FILE.yaml] [--resume] [key=value ...]",
            "",
            stage.summary,
            "",
            f"settings ({config_cls.__name__}; YAML keys or key=value overrides):",
            config_help(config_cls),
        ]
    )
