"""Shared fixtures: one tiny world, a tokenizer trained on its corpus, and a saved "test"-preset model.

Built once per session into a temporary folder; tests that train get fresh model copies from `new_model`.
"""
import os

os.environ["TETHER_QUIET"] = "1"  # no progress bars in test output
# Tiny models on a shared 2-core machine: extra intra-op threads only contend (about 50x slower per step).
os.environ.setdefault("OMP_NUM_THREADS", "1")
# A default path such as "runs/tokenizer" reads as a hub id when ./runs is absent: fail fast, never retry the network.
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest  # noqa: E402

TINY_WORLD = dict(n_countries=8, sft_countries=5, encyclopedia_docs=3, pretrain_dialogues=150, sft_demos=60,
                  eval_per_category=4)


@pytest.fixture(scope="session")
def tiny_world() -> dict:
    """WorldConfig sizes of the tiny world (key=value overrides for `tether world`)."""
    return dict(TINY_WORLD)


@pytest.fixture(scope="session")
def world_dir(tmp_path_factory):
    """Folder written by `tether world` with TINY_WORLD sizes: corpus.jsonl, sft.jsonl, eval.jsonl, world.yaml."""
    from tether.world.build import WorldConfig, run

    out = tmp_path_factory.mktemp("world")
    run(WorldConfig(out=str(out), **TINY_WORLD))
    return out


@pytest.fixture(scope="session")
def tokenizer(world_dir):
    """A 400-token byte-level BPE trained on the tiny world's corpus."""
    from tether.tokenizer import iter_corpus_texts, train_tokenizer

    return train_tokenizer(iter_corpus_texts(str(world_dir / "corpus.jsonl")), vocab_size=400)


@pytest.fixture(scope="session")
def tokenizer_dir(tokenizer, tmp_path_factory):
    out = tmp_path_factory.mktemp("tokenizer")
    tokenizer.save_pretrained(out)
    return out


@pytest.fixture
def new_model(tokenizer):
    """Factory of freshly initialised "test"-preset models (the same weights for the same seed)."""
    from tether.models import build_model

    return lambda seed=0: build_model("test", tokenizer, seed=seed)


@pytest.fixture(scope="session")
def model_dir(tokenizer, tmp_path_factory):
    """An untrained "test"-preset model and its tokenizer saved as a Hugging Face folder."""
    from tether.models import build_model, save_pretrained

    out = tmp_path_factory.mktemp("model")
    save_pretrained(build_model("test", tokenizer, seed=0), tokenizer, str(out))
    return out


@pytest.fixture(scope="session")
def rm_dir(model_dir, tmp_path_factory):
    """An untrained causal reward model on the test-preset backbone (the policy's tokenizer), normalised by gain 2
    and bias 0.5 (test_online, test_bon)."""
    import torch

    from tether.reward import RewardModel

    out = tmp_path_factory.mktemp("rm")
    torch.manual_seed(0)
    rm = RewardModel.from_backbone(str(model_dir))
    rm.set_normalisation(2.0, 0.5)
    rm.save_pretrained(out)
    return out


HH_ROWS = 48
"""Rows of the real HH-RLHF file the real-model tests train on (test_real_models, test_hh_cli)."""


@pytest.fixture(scope="session")
def real_root(tmp_path_factory):
    """One folder for tests/archkit's tokenizers and model folders, so each tokenizer shape is trained once a session
    (the real-model tests: test_real_models, test_hh_cli)."""
    return tmp_path_factory.mktemp("real")


@pytest.fixture(scope="session")
def hh_file(real_root):
    """The first HH_ROWS rows of the real HH-RLHF file (archkit.HH; the built-in dialogues when it is absent) as
    gzipped JSONL, as a user downloads it: {"chosen", "rejected"} dialogues that tether reads with format=hh (or
    auto)."""
    import gzip
    import json

    import archkit

    path = real_root / "hh.jsonl.gz"
    with gzip.open(path, "wt", encoding="utf-8") as f:
        f.writelines(json.dumps(row) + "\n" for row in archkit.hh_rows(HH_ROWS))
    return path
