"""`tether serve`: the OpenAI-compatible server, tested with the official `openai` client against real uvicorn servers
on loopback (tiny qwen2/ChatML, llama/Llama-3 and gpt2/plain-text models from tests/archkit.py), plus its pure parts:
incremental detokenisation with stop strings (`TextStream`) and batch planning (`take_batch`)."""
from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import threading
import time
from pathlib import Path

import archkit
import httpx
import openai
import pytest
from servekit import live_server

from tether.chat import chat_format
from tether.cli import main
from tether.generation import generate_records
from tether.models import load_policy, load_tokenizer
from tether.serve.jobs import Job, Sampling, take_batch
from tether.serve.text import TextStream

HELLO = [{"role": "user", "content": "Hello, how are you?"}]
TURNS = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"},
         {"role": "assistant", "content": "Hello!"}, {"role": "user", "content": "What is the capital of France?"}]


# -- pure parts -----------------------------------------------------------------------------------------------


def _stream(pieces: dict[int, str], ids: list[int], stops=()) -> tuple[list[str], TextStream]:
    """Feed ids through a TextStream whose tokenizer maps id -> pieces[id]; the pieces taken after each token."""
    text = TextStream(lambda window: "".join(pieces[i] for i in window), stops)
    taken = []
    for i in ids:
        text.add(i)
        taken.append(text.take())
    return taken, text


def test_stop_string_cuts_the_text_before_it():
    taken, text = _stream({1: "Hel", 2: "lo", 3: " wor", 4: "ld"}, [1, 2, 3, 4], stops=("wor",))
    # "Hello wor" holds "wor" at 6: the text is "Hello ", and nothing is added after the stop
    assert text.text == "Hello " and text.stopped
    assert taken == ["Hel", "lo", " ", ""]


def test_a_tail_that_may_become_a_stop_string_is_held_back():
    taken, text = _stream({1: "Hel", 2: "lo", 3: " wor"}, [1, 2, 3], stops=("lo w",))
    # "Hel" ends in "l", a prefix of "lo w": "He" goes out; "Hello" ends in "lo": "l" more; then "lo w" is found at 3
    assert taken == ["He", "l", ""]
    assert text.text == "Hel"  # everything sent ("He" + "l") is the final text: nothing sent is taken back


def test_a_character_split_across_tokens_waits_for_its_last_byte():
    data = "é€!".encode()  # é: 2 bytes, €: 3 bytes
    text = TextStream(lambda window: bytes(window).decode("utf-8", errors="replace"))
    taken = []
    for b in data:
        text.add(b)
        taken.append(text.take())
    assert taken == ["", "é", "", "", "€", "!"]


def test_flush_adds_a_cut_character_at_the_end():
    text = TextStream(lambda window: bytes(window).decode("utf-8", errors="replace"))
    for b in "a€".encode()[:-1]:  # the response ends inside "€"
        text.add(b)
    assert text.take() == "a"
    text.flush()
    assert text.take(final=True) == "\ufffd"


@pytest.mark.parametrize("shape", ["chatml", "gemma"])
def test_pieces_join_to_the_whole_decode_on_real_tokenizers(shape, real_root):
    """Random token sequences (special tokens included) through byte-level and SentencePiece-style tokenizers: the
    streamed pieces join to exactly `decode(ids, skip_special_tokens=True)`."""
    tok = archkit.tokenizer(shape, real_root)
    decode = lambda ids: tok.decode(ids, skip_special_tokens=True)  # noqa: E731
    rng = random.Random(0)
    for _ in range(100):
        ids = [rng.randrange(len(tok)) for _ in range(rng.randrange(1, 30))]
        text, joined = TextStream(decode), ""
        for i in ids:
            text.add(i)
            joined += text.take()
        text.flush()
        assert joined + text.take(final=True) == decode(ids)


def _job(temperature=1.0, rows=1, prompt=4, max_tokens=10) -> Job:
    return Job([[1] * prompt] * rows, 1, Sampling(temperature, 1.0, max_tokens, 0), False, deliver=print)


def test_take_batch_groups_alike_jobs_within_rows_and_positions():
    a, b, c, d, e = _job(rows=3), _job(temperature=0.0), _job(rows=2), _job(prompt=50, max_tokens=60), _job(rows=2)
    # a (3 rows) + c (2 rows) = 5 rows <= 5; b samples differently; d: longest prompt 50 + most steps 60 > 100
    # positions; e would make 7 rows
    assert take_batch([a, b, c, d, e], max_rows=5, positions=100) == ([a, c], [b, d, e])
    assert take_batch([b, a], max_rows=5, positions=100) == ([b], [a])
    assert take_batch([d, a], max_rows=5, positions=100) == ([d], [a])  # 50 + 60 > 100, but the first always goes
    assert take_batch([a, d], max_rows=5, positions=None) == ([a, d], [])  # no position limit: 4 rows fit


# -- live servers ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def qwen(real_root):
    """qwen2 with the ChatML tokenizer, small limits so that bad requests are cheap to make."""
    path = archkit.save_model("qwen2", "chatml", real_root)
    with live_server(path, max_tokens=64, default_max_tokens=16, max_prompt_tokens=128, max_body_bytes=20_000,
                     max_n=4, batch_wait_ms=20) as live:
        yield live


@pytest.fixture(scope="module")
def llama(real_root):
    path = archkit.save_model("llama", "llama3", real_root)
    with live_server(path, max_tokens=256, default_max_tokens=16) as live:
        yield live


@pytest.fixture(scope="module")
def gpt2(real_root):
    """A base model: no chat template (plain text)."""
    with live_server(archkit.save_model("gpt2", "base", real_root), default_max_tokens=16) as live:
        yield live


def client(live, **kw) -> openai.OpenAI:
    return openai.OpenAI(base_url=live.url, api_key=kw.pop("api_key", "unused"), max_retries=0, **kw)


def chat(live, messages=HELLO, **kw):
    return client(live).chat.completions.create(model=live.engine.name, messages=messages, **kw)


def streamed(live, **kw) -> tuple[dict[int, str], dict[int, str]]:
    """(text, finish_reason) per choice index of a streamed chat completion."""
    texts, finish = {}, {}
    for chunk in client(live).chat.completions.create(model=live.engine.name, stream=True, **kw):
        for c in chunk.choices:
            texts[c.index] = texts.get(c.index, "") + (c.delta.content or "")
            finish[c.index] = c.finish_reason or finish.get(c.index)
    return texts, finish


def test_models_lists_the_served_model(qwen):
    assert [m.id for m in client(qwen).models.list().data] == ["qwen2-chatml"]
    assert client(qwen).models.retrieve("qwen2-chatml").owned_by == "tether"


@pytest.mark.parametrize("server", ["qwen", "llama", "gpt2"])
def test_greedy_chat_equals_tethers_own_sampling(server, request):
    """The model's chat template through tether.chat, tether's stop tokens: greedy replies are those of
    `generate_records` (Hugging Face generate) on the same folder, with the same token counts and ends."""
    live = request.getfixturevalue(server)
    model, tok = load_policy(live.cfg.model), load_tokenizer(live.cfg.model)
    fmt = chat_format(tok)
    prompts = [HELLO, TURNS] if fmt.template is not None else ["Hello, how are you?"]
    expected = generate_records(model, fmt, prompts, 12, 0.0, 1, 0)
    for prompt, want in zip(prompts, expected):
        messages = prompt if isinstance(prompt, list) else [{"role": "user", "content": prompt}]
        r = chat(live, messages, max_tokens=12, temperature=0)
        assert r.object == "chat.completion" and r.model == live.engine.name and r.id.startswith("chatcmpl-")
        assert r.choices[0].message.role == "assistant"
        assert r.choices[0].message.content.strip() == want.text
        assert (r.usage.completion_tokens, r.choices[0].finish_reason == "stop") == (want.tokens, want.ended)
        assert r.usage.prompt_tokens == len(fmt.prompt_ids(prompt))
        assert r.usage.total_tokens == r.usage.prompt_tokens + r.usage.completion_tokens


def test_a_model_without_template_answers_one_message_only(gpt2):
    with pytest.raises(openai.BadRequestError, match="no chat template"):
        chat(gpt2, TURNS[1:], max_tokens=4)


@pytest.mark.parametrize("server", ["qwen", "llama"])
def test_streamed_chunks_join_to_the_non_streamed_text(server, request):
    live = request.getfixturevalue(server)
    kw = dict(messages=TURNS, max_tokens=16, temperature=1.0, seed=3, n=2)
    whole = chat(live, **kw)
    texts, finish = streamed(live, **kw)
    assert texts == {c.index: c.message.content for c in whole.choices}
    assert finish == {c.index: c.finish_reason for c in whole.choices}
    assert texts[0] != texts[1]  # two choices, two seeds


def test_the_stream_is_openais_chunk_format_ending_with_done(qwen):
    body = {"model": "qwen2-chatml", "messages": HELLO, "max_tokens": 6, "stream": True,
            "stream_options": {"include_usage": True}}
    with httpx.stream("POST", f"{qwen.url}/chat/completions", json=body) as r:
        assert r.headers["content-type"].startswith("text/event-stream")
        lines = [line for line in r.iter_lines() if line]
    assert all(line.startswith("data: ") for line in lines) and lines[-1] == "data: [DONE]"
    events = [json.loads(line[6:]) for line in lines[:-1]]
    assert {e["object"] for e in events} == {"chat.completion.chunk"} and len({e["id"] for e in events}) == 1
    assert events[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert events[-2]["choices"][0]["finish_reason"] in ("stop", "length")  # then the usage chunk
    assert events[-1]["choices"] == [] and events[-1]["usage"]["completion_tokens"] <= 6


def test_n_choices_and_seed_reproducibility(qwen):
    first = chat(qwen, max_tokens=10, temperature=1.0, seed=11, n=3)
    assert [c.index for c in first.choices] == [0, 1, 2]
    texts = [c.message.content for c in first.choices]
    assert len(set(texts)) == 3
    assert [c.message.content for c in chat(qwen, max_tokens=10, temperature=1.0, seed=11, n=3).choices] == texts
    assert chat(qwen, max_tokens=10, temperature=1.0, seed=12).choices[0].message.content != texts[0]
    assert 3 <= first.usage.completion_tokens <= 30  # summed over the 3 choices, each 1 to 10 tokens


def test_stop_strings_cut_at_the_first_occurrence(qwen):
    kw = dict(max_tokens=24, temperature=1.0, seed=5)
    full = chat(qwen, **kw).choices[0].message.content
    stop = next(full[i:i + 2] for i in range(3, len(full) - 2) if full[i:i + 2].strip())
    cut = full[:full.find(stop)]
    r = chat(qwen, stop=[stop, "never-appears"], **kw)
    assert (r.choices[0].message.content, r.choices[0].finish_reason) == (cut, "stop")
    assert r.usage.completion_tokens < 24
    texts, finish = streamed(qwen, messages=HELLO, stop=stop, **kw)
    assert (texts, finish) == ({0: cut}, {0: "stop"})


def test_completions_take_plain_prompt_text(qwen):
    tok = load_tokenizer(qwen.cfg.model)
    r = client(qwen).completions.create(model="qwen2-chatml", prompt=["Once upon a time", "The capital"], n=2,
                                        max_tokens=8, temperature=1.0, seed=1)
    assert r.object == "text_completion" and [c.index for c in r.choices] == [0, 1, 2, 3]
    assert r.usage.prompt_tokens == len(tok("Once upon a time")["input_ids"]) + len(tok("The capital")["input_ids"])
    one = client(qwen).completions.create(model="qwen2-chatml", prompt="Once upon a time", n=2, max_tokens=8,
                                          temperature=1.0, seed=1)
    assert [c.text for c in one.choices] == [c.text for c in r.choices[:2]]  # choice i of prompt 0: the same seeds
    chunks = client(qwen).completions.create(model="qwen2-chatml", prompt="Once upon a time", n=2, max_tokens=8,
                                             temperature=1.0, seed=1, stream=True)
    texts = {}
    for chunk in chunks:
        for c in chunk.choices:
            texts[c.index] = texts.get(c.index, "") + c.text
    assert texts == {0: one.choices[0].text, 1: one.choices[1].text}


LONG = "word " * 300  # ~300 tokens: over the qwen server's max_prompt_tokens (128)


@pytest.mark.parametrize("kwargs, status, message", [
    ({"max_tokens": 65}, 400, "max_tokens: 65 is more than this server's limit of 64"),
    ({"messages": [{"role": "user", "content": LONG}]}, 400, "max_prompt_tokens"),
    ({"messages": []}, 400, "messages: List should have at least 1 item"),
    ({"messages": [{"role": "tool", "content": "x"}]}, 400, "messages[0].role: Input should be 'system'"),
    ({"messages": [{"role": "user", "content": 7}]}, 400, "messages[0].content: Input should be a valid string"),
    ({"messages": [{"role": "user"}]}, 400, "messages[0].content: Field required"),
    ({"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {}}]}]}, 400, "messages[0]"),
    ({"temperature": "hot"}, 400, "temperature: Input should be a valid number"),
    ({"temperature": 2.5}, 400, "temperature: Input should be less than or equal to 2"),
    ({"top_p": 0}, 400, "top_p: Input should be greater than 0"),
    ({"n": "2"}, 400, "n: Input should be a valid integer"),
    ({"n": 5}, 400, "n: 5 is more than this server's limit of 4"),
    ({"max_tokens": 0}, 400, "max_tokens: Input should be greater than or equal to 1"),
    ({"stop": ["a", "b", "c", "d", "e"]}, 400, "stop: 5 strings, at most 4"),
    ({"stop": [""]}, 400, "stop: an empty string"),
    ({"seed": 1.5}, 400, "seed: Input should be a valid integer"),
    ({"stream": "yes"}, 400, "stream: Input should be a valid boolean"),
    ({"logprobs": True}, 400, "logprobs: not supported by tether serve"),
    ({"tools": [{"type": "function", "function": {"name": "f"}}]}, 400, "tools: not supported"),
    ({"model": "gpt-4o"}, 404, "model: 'gpt-4o' is not served here; this server serves 'qwen2-chatml'"),
    ({"messages": [{"role": "user", "content": "x" * 30_000}]}, 413, "max_body_bytes"),
])
def test_bad_input_is_a_4xx_with_a_message(qwen, kwargs, status, message):
    body = {"model": "qwen2-chatml", "messages": HELLO, **kwargs}
    with pytest.raises(openai.APIStatusError) as err:
        client(qwen).chat.completions.create(**body)
    assert err.value.status_code == status
    assert message in err.value.body["message"]
    assert qwen.engine.stats["queued"] == 0


@pytest.mark.parametrize("path, body, status, message", [
    ("/chat/completions", b"{not json", 400, "body: not valid JSON"),
    ("/chat/completions", b"[]", 400, "Input should be an object"),
    ("/completions", b'{"model": "qwen2-chatml", "prompt": []}', 400, "prompt"),
    ("/completions", b'{"model": "qwen2-chatml", "prompt": [1, 2]}', 400, "prompt"),
    ("/completions", b'{"model": "qwen2-chatml", "prompt": "", "max_tokens": 2}', 400, "prompt: empty"),
    ("/completions", b'{"model": "qwen2-chatml", "prompt": "hi", "echo": true}', 400, "echo: not supported"),
    ("/embeddings", b"{}", 404, "no route POST /v1/embeddings"),
])
def test_malformed_bodies_and_routes_get_openai_error_json(qwen, path, body, status, message):
    r = httpx.post(qwen.url + path, content=body, headers={"content-type": "application/json"})
    assert r.status_code == status
    error = r.json()["error"]
    assert message in error["message"] and error["type"] == "invalid_request_error"


def test_a_sampling_failure_is_a_500_and_the_server_goes_on(qwen, monkeypatch):
    import tether.serve.engine as engine_module

    def broken(*args, **kwargs):
        raise RuntimeError("device lost")

    monkeypatch.setattr(engine_module, "sample", broken)
    with pytest.raises(openai.InternalServerError, match="internal server error"):
        chat(qwen, max_tokens=4)
    with pytest.raises(openai.APIError, match="internal server error"):  # the status line was sent: an error event
        streamed(qwen, messages=HELLO, max_tokens=4)
    monkeypatch.undo()
    assert chat(qwen, max_tokens=4).choices[0].finish_reason in ("stop", "length")


def test_a_full_queue_is_a_429(real_root, monkeypatch):
    """max_queued=1: while the worker holds request A, B waits in the queue and C is refused."""
    import tether.serve.engine as engine_module

    release, real = threading.Event(), engine_module.sample
    monkeypatch.setattr(engine_module, "sample", lambda *a, **kw: (release.wait(30), real(*a, **kw))[1])
    with live_server(archkit.save_model("qwen2", "chatml", real_root), max_queued=1, default_max_tokens=2,
                     batch_wait_ms=0) as live:
        answers = []
        threads = [threading.Thread(target=lambda: answers.append(chat(live))) for _ in range(2)]
        threads[0].start()
        _wait_for(lambda: live.engine.stats["batches"] == 1)  # A is sampling (held)
        threads[1].start()
        _wait_for(lambda: live.engine.stats["queued"] == 1)  # B waits
        with pytest.raises(openai.RateLimitError, match="the server is busy: 1 requests are waiting"):
            chat(live)
        release.set()
        for t in threads:
            t.join(30)
        assert len(answers) == 2 and live.engine.stats["requests"] == 2


def _wait_for(condition, seconds: float = 20) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


def test_prompt_and_max_tokens_beyond_the_models_positions(llama):
    # llama's 256 positions; the prompt is ~100 tokens, and 250 more do not fit
    with pytest.raises(openai.BadRequestError, match=r"positions; use max_tokens<=\d+") as err:
        chat(llama, [{"role": "user", "content": "word " * 90}], max_tokens=250)
    assert err.value.code == "context_length_exceeded"


def test_an_api_key_is_required_when_configured(real_root):
    path = archkit.save_model("qwen2", "chatml", real_root)
    with live_server(path, api_key="s3cret-key", default_max_tokens=4) as live:
        for key in ("wrong", "s3cret-ke", "s3cret-key2"):
            with pytest.raises(openai.AuthenticationError, match="incorrect or missing API key"):
                chat(live) if key == "wrong" else client(live, api_key=key).models.list()
        assert httpx.get(f"{live.url}/models").status_code == 401  # no header at all
        assert httpx.get(f"{live.url}/models", headers={"Authorization": "Basic s3cret-key"}).status_code == 401
        assert client(live, api_key="s3cret-key").models.list().data[0].id == "qwen2-chatml"
        assert live.engine.stats["requests"] == 0  # refused before any work


def test_twenty_concurrent_requests_are_batched_and_keep_their_seeded_text(qwen):
    """Alone, then 20 at once from threads: every request succeeds, the worker ran fewer batches than requests
    (several requests per batch), and each seeded request gives the text it gave alone."""
    kw = dict(max_tokens=12, temperature=1.0)
    alone = [chat(qwen, [{"role": "user", "content": f"Question {i}?"}], seed=i, **kw).choices[0].message.content
             for i in range(20)]
    before = dict(qwen.engine.stats)
    results: list = [None] * 20

    def ask(i):
        results[i] = chat(qwen, [{"role": "user", "content": f"Question {i}?"}], seed=i, **kw)

    threads = [threading.Thread(target=ask, args=(i,)) for i in range(20)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert [r.choices[0].message.content for r in results] == alone
    batches = qwen.engine.stats["batches"] - before["batches"]
    assert qwen.engine.stats["requests"] - before["requests"] == 20
    assert qwen.engine.stats["max_batch_requests"] > 1 and batches < 20
    print(f"20 concurrent requests: {batches} batches, largest {qwen.engine.stats['max_batch_requests']} requests")


def test_serve_config_errors_are_one_line(capsys, monkeypatch):
    monkeypatch.delenv("TETHER_TEST_NO_KEY", raising=False)
    assert main(["serve"]) == 2
    assert "ServeConfig.model: give the model folder to serve" in capsys.readouterr().err
    assert main(["serve", "model=x", "api_key_env=TETHER_TEST_NO_KEY"]) == 2
    assert capsys.readouterr().err.strip() == ("error: api_key_env: environment variable TETHER_TEST_NO_KEY is not "
                                               "set or empty; export TETHER_TEST_NO_KEY=<key> first")
    assert main(["serve", "model=x", "max_n=64"]) == 2
    assert "max_n: must be <= max_batch_rows (32)" in capsys.readouterr().err


def test_serve_help_imports_neither_torch_nor_fastapi():
    probe = ("import sys; from tether.cli import main; main(['serve', '--help']); "
             "print('torch' in sys.modules, 'fastapi' in sys.modules)")
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[1] / "src")}
    proc = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=60, env=env)
    assert "max_body_bytes (int, default 1000000)" in proc.stdout
    assert proc.stdout.splitlines()[-1] == "False False"


def test_tether_serve_command_serves_and_logs_one_line_per_request(real_root, tmp_path):
    """The real command in a subprocess: it serves, asks for the key, and logs each request without its text."""
    import socket

    path = archkit.save_model("qwen2", "chatml", real_root)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[1] / "src"), "SERVE_KEY": "k-123"}
    log = (tmp_path / "serve.log").open("w+")
    proc = subprocess.Popen([sys.executable, "-m", "tether", "serve", f"model={path}", f"port={port}",
                             "api_key_env=SERVE_KEY", "name=tiny"], stdout=log, stderr=subprocess.STDOUT, env=env)
    try:
        live = type("Live", (), {"url": f"http://127.0.0.1:{port}/v1"})
        deadline = time.monotonic() + 120
        while True:
            try:
                if httpx.get(f"{live.url}/models", headers={"Authorization": "Bearer k-123"}).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert proc.poll() is None and time.monotonic() < deadline, Path(log.name).read_text()
            time.sleep(0.2)
        r = client(live, api_key="k-123").chat.completions.create(
            model="tiny", messages=[{"role": "user", "content": "a secret prompt"}], max_tokens=3)
        assert r.usage.completion_tokens <= 3
    finally:
        proc.terminate()
        proc.wait(30)
        log.close()
    out = Path(log.name).read_text()
    assert f"serving tiny on http://127.0.0.1:{port}/v1" in out
    lines = [line for line in out.splitlines() if "POST /v1/chat/completions 200" in line]
    assert len(lines) == 1 and "prompt_tokens=" in lines[0] and "completion_tokens=" in lines[0]
    assert "secret prompt" not in out
