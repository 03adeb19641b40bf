"""Runs tether stages inside torchrun's processes, for tests/test_distributed.py.

    python -m torch.distributed.run --standalone --nproc_per_node 2 tests/distkit.py WORKDIR JOBS.json

JOBS.json is a list of [stage, config.yaml] pairs, run in order with `tether.cli.main` in every process (the
first stage joins the process group, the others reuse it). Each rank first moves into WORKDIR/rank<R>, so a
config's relative `out` folder lands in a folder of its own per rank: whatever a rank other than 0 writes shows
up there. A pair ["tag", metrics.jsonl] marks the first line of that file (rank 0), so that a later resumed run
shows whether it kept it (resumed) or rewrote it (started over). Also the reward function of the online runs
(`distkit:letters`).
"""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path


def letters(prompts, responses):
    """Rewards the letter "e": 0.25 per occurrence (as tests/test_online.py)."""
    return [0.25 * r.count("e") for r in responses]


def main(argv: list[str]) -> int:
    from tether.cli import main as tether

    workdir, jobs = Path(argv[0]), json.loads(Path(argv[1]).read_text())
    own = workdir / f"rank{os.environ['RANK']}"
    own.mkdir(parents=True, exist_ok=True)
    os.chdir(own)
    for stage, config in jobs:
        if stage == "tag":
            if os.environ["RANK"] == "0":
                path = Path(config)
                lines = path.read_text().splitlines()
                lines[0] = json.dumps({**json.loads(lines[0]), "tagged": True})
                path.write_text("\n".join(lines) + "\n")
            continue
        code = tether([stage, "--config", config])
        if code:
            return code
    from tether.distributed import finish

    finish()
    return 0


if __name__ == "__main__":
    code = main(sys.argv[1:])
    # Leave without the interpreter's teardown: in 2 torchruns of 50 here (most with another busy process beside),
    # a rank aborted after its last job had finished ("terminate called without an active exception"; faulthandler:
    # no Python frame left, so during finalisation), and torchrun then reported the whole run as failed.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
