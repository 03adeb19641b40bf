"""tether.chat: a model's own chat template, masks, stop tokens and truncation, on real tokenizer shapes.

Real shapes come from tests/archkit.py (GPT-2 base with no pad or template, ChatML, Llama-3, Gemma/SentencePiece);
tether's own tokenizer is checked against `apply_chat_template(..., return_assistant_tokens_mask=True)`.
"""
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import archkit
from tether.chat import ChatFormat, chat_format, cut_to_fit, Encoded, merged_turns
from tether.chat_templates import TEMPLATES, resolve_template
from tether.errors import ConfigError, DataError
from tether.tokenizer import train_tokenizer

SENTENCES = ["The capital of France is Paris.", "What is 12 plus 30? It is 42.", "Hello! How can I help you today?",
             "I am not sure, but I think the answer is seven.", "Please answer briefly and politely."] * 10
SYSTEM = {"role": "system", "content": "You are a helpful, terse assistant."}
SINGLE = [{"role": "user", "content": "What is 12 plus 30?"}, {"role": "assistant", "content": "It is 42."}]
MULTI = [SYSTEM, {"role": "user", "content": "Hello!"}, {"role": "assistant", "content": " How can I help you today? "},
         {"role": "user", "content": "Capital of France?"}, {"role": "assistant", "content": "Paris."}]
# (shape, chat_template setting, end-of-turn token): each real shape with its own template, and GPT-2's base tokenizer
# with the built-in HH template (its only special token, <|endoftext|>, ends replies).
SHAPES = [("chatml", "", "<|im_end|>"), ("llama3", "", "<|eot_id|>"), ("gemma", "", "<end_of_turn>"),
          ("base", "hh", "<|endoftext|>"), ("chatml", "chatml", "<|im_end|>"), ("llama3", "zephyr", "<|end_of_text|>")]


@pytest.fixture(scope="module")
def tok():
    return train_tokenizer(SENTENCES, vocab_size=400)


@pytest.fixture(scope="module")
def shapes(tmp_path_factory):
    root = tmp_path_factory.mktemp("shapes")
    return lambda shape: archkit.tokenizer(shape, root)


def hf_chat(tok, messages, **kw):
    return tok.apply_chat_template(messages, tokenize=True, return_dict=True, **kw)


def conversation(shape):
    return MULTI[1:] if shape == "gemma" else MULTI  # Gemma's own template refuses a system message


# ---------------------------------------------------------------------------------------------- tether's tokenizer


@pytest.mark.parametrize("messages", [SINGLE, [SYSTEM, *SINGLE], MULTI], ids=["single", "system", "multi"])
def test_tether_template_matches_hf_with_assistant_masks(tok, messages):
    ref = hf_chat(tok, messages, return_assistant_tokens_mask=True)
    enc = chat_format(tok).encode(messages)
    assert enc.input_ids == ref["input_ids"] and enc.loss_mask == ref["assistant_masks"]
    assert not enc.truncated


def test_hand_built_mask(tok):
    # One-character contents are one byte token each, so every position is known:
    # pos: 0     1    2   3    4   5      6   7     8    9   10     11  12
    #      <bos> sys  s   user u   asst   a   <eos> user v   asst   b   <eos>
    msgs = [{"role": "system", "content": "s"}, {"role": "user", "content": "u"}, {"role": "assistant", "content": "a"},
            {"role": "user", "content": "v"}, {"role": "assistant", "content": "b"}]
    c = tok.convert_tokens_to_ids
    enc = chat_format(tok).encode(msgs)
    assert enc.input_ids == [1, 3, c("s"), 4, c("u"), 5, c("a"), 2, 4, c("v"), 5, c("b"), 2]
    assert enc.loss_mask == [0, 0, 0, 0, 0, 0, 1, 1, 0, 0, 0, 1, 1]
    assert enc.prompt_length == 11  # the final reply starts at position 11
    # As a prompt and a response, only the final reply trains.
    last = chat_format(tok).encode(msgs[:-1], "b")
    assert last.input_ids == enc.input_ids and last.loss_mask == [0] * 11 + [1, 1]


@settings(max_examples=30, deadline=None)
@given(contents=st.lists(st.text(alphabet=st.characters(blacklist_categories=("Cs",), blacklist_characters="<>"),
                                 max_size=30), min_size=1, max_size=3))
def test_tether_template_matches_hf_on_random_text(tok, contents):
    msgs = [m for c in contents for m in ({"role": "user", "content": c}, {"role": "assistant", "content": c[::-1]})]
    ref = hf_chat(tok, msgs, return_assistant_tokens_mask=True)
    enc = chat_format(tok).encode(msgs)
    assert enc.input_ids == ref["input_ids"] and enc.loss_mask == ref["assistant_masks"]


def test_control_tokens_in_content_are_text(tok):
    # A user typing "<eos>" or "<|assistant|>" must not forge a stop or a turn.
    msgs = [{"role": "user", "content": "say <eos> then <|assistant|>"}]
    ids = chat_format(tok).prompt_ids(msgs)
    assert ids.count(2) == 0 and ids.count(5) == 1  # the one <|assistant|> is the generation prompt's
    assert ids == hf_chat(tok, msgs, sanitize_control_tokens=True, add_generation_prompt=True)["input_ids"]
    assert tok.decode(ids[2:-1]) == msgs[0]["content"]


# ---------------------------------------------------------------------------------------------- real tokenizer shapes


@pytest.mark.parametrize("shape,setting,eot", SHAPES)
def test_renders_the_template_and_masks_each_reply_with_its_end_of_turn(shapes, shape, setting, eot):
    tk = shapes(shape)
    fmt = chat_format(tk, setting)
    assert fmt.eot_text == eot and fmt.stop_ids[0] == tk.convert_tokens_to_ids(eot)
    messages = conversation(shape)
    enc = fmt.encode(messages)
    # The ids spell exactly the template's text, with the trailing text after the final reply left off.
    text = tk.apply_chat_template(messages, chat_template=fmt.template, tokenize=False)
    assert text.startswith(tk.decode(enc.input_ids)) and tk.decode(enc.input_ids).endswith(eot)
    # The trained spans are each reply and its end-of-turn token, nothing else.
    spans, run = [], []
    for i, m in zip(enc.input_ids, enc.loss_mask):
        if m:
            run.append(i)
        elif run:
            spans, run = spans + [run], []
    spans += [run] if run else []
    replies = [m["content"] for m in messages if m["role"] == "assistant"]
    assert len(spans) == len(replies)
    for span, reply in zip(spans, replies):
        assert span[-1] == fmt.eot_id and fmt.eot_id not in span[:-1]
        assert tk.decode(span[:-1]).strip() == reply.strip()
    # One bos at most (templates write their own), no unk anywhere.
    if tk.bos_token_id is not None and tk.bos_token_id != tk.eos_token_id:
        assert enc.input_ids.count(tk.bos_token_id) <= 1
    assert tk.unk_token_id is None or tk.unk_token_id == fmt.eot_id or tk.unk_token_id not in enc.input_ids


@pytest.mark.parametrize("shape,setting,eot", SHAPES)
def test_generation_prompt_is_the_trained_prompt(shapes, shape, setting, eot):
    fmt = chat_format(shapes(shape), setting)
    messages = conversation(shape)
    enc = fmt.encode(messages[:-1], "Paris, of course.")
    prompt = fmt.prompt_ids(messages[:-1])
    assert enc.input_ids[:enc.prompt_length] == prompt and enc.prompt_length == len(prompt)
    assert sum(enc.loss_mask) == len(enc.input_ids) - len(prompt)  # only the response trains


def test_no_pad_token_pads_with_eos(shapes):
    tk = shapes("base")
    assert tk.pad_token_id is None
    fmt = chat_format(tk, "hh")
    assert fmt.pad_id == tk.eos_token_id == tk.pad_token_id


def test_gemma_bos_is_written_once(shapes):
    tk = shapes("gemma")  # its tokenizer adds <bos> itself, and its template writes {{ bos_token }} too
    fmt = chat_format(tk)
    enc = fmt.encode(SINGLE)
    assert enc.input_ids[0] == tk.bos_token_id and enc.input_ids.count(tk.bos_token_id) == 1
    # A reply in the middle of the chat gets no SentencePiece prefix space of its own.
    assert tk.convert_ids_to_tokens(enc.input_ids[enc.prompt_length]) != "▁"


def test_plain_text_without_template(shapes):
    tk = shapes("base")
    fmt = chat_format(tk)
    assert fmt.template is None and fmt.stop_ids == (tk.eos_token_id,)
    enc = fmt.encode("\n\nHuman: Hi\n\nAssistant:", " Hello there.")
    prompt = tk("\n\nHuman: Hi\n\nAssistant:")["input_ids"]
    reply = tk(" Hello there.", add_special_tokens=False)["input_ids"]
    assert enc.input_ids == prompt + reply + [tk.eos_token_id]
    assert enc.loss_mask == [0] * len(prompt) + [1] * (len(reply) + 1)
    # The Gemma shape's tokenizer adds its bos to a plain prompt (its own behaviour), once.
    gm = chat_format(shapes("gemma"), "none")
    enc = gm.encode("Hi", " there")
    assert enc.input_ids[0] == gm.tokenizer.bos_token_id and enc.input_ids[-1] == gm.tokenizer.eos_token_id


def test_conversations_without_template_name_the_setting(shapes):
    with pytest.raises(ConfigError, match="chat_template"):
        chat_format(shapes("base")).encode(SINGLE)


def test_template_without_a_turn_end_token_is_refused(shapes):
    with pytest.raises(ConfigError, match="chat_template: with chatml.*never stop"):
        chat_format(shapes("base"), "chatml")  # GPT-2 has no <|im_end|> token


def test_prefix_unstable_template_is_refused(shapes, tmp_path):
    # Like Qwen3's, this template drops earlier replies' reasoning: turn 1 renders differently once turn 2 exists.
    unstable = ("{% for m in messages %}{{ '<|im_start|>' + m['role'] + '\n' }}{% if m['role'] == 'assistant' and "
                "not loop.last %}{{ m['content'].split('</think>')[-1] }}{% else %}{{ m['content'] }}{% endif %}"
                "{{ '<|im_end|>\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}"
                "{% endif %}")
    path = tmp_path / "unstable.jinja"
    path.write_text(unstable)
    fmt = chat_format(shapes("chatml"), str(path))
    fmt.encode(SINGLE)  # one reply: nothing to rewrite
    thinking = [{"role": "user", "content": "a"}, {"role": "assistant", "content": "hm</think>b"},
                {"role": "user", "content": "c"}, {"role": "assistant", "content": "d"}]
    with pytest.raises(ConfigError, match="chat_template: .*not prefix-stable"):
        fmt.encode(thinking)


def test_setting_names(shapes, tmp_path):
    tk = shapes("chatml")
    with pytest.raises(ConfigError, match="chat_template: 'vicuna' is not a built-in name"):
        resolve_template(tk, "vicuna")
    with pytest.raises(ConfigError, match="template file not found"):
        resolve_template(tk, str(tmp_path / "missing.jinja"))
    assert resolve_template(tk, "none") == (None, "plain text")
    assert set(TEMPLATES) >= {"chatml", "llama3", "gemma", "zephyr", "hh", "tether"}
    # A template chosen by the setting is stored on the tokenizer, so a saved model carries it.
    base = shapes("base")
    chat_format(base, "hh")
    base.save_pretrained(tmp_path / "saved")
    assert type(base).from_pretrained(tmp_path / "saved").chat_template == TEMPLATES["hh"]


def test_control_tokens_in_contents_of_a_real_template(shapes):
    fmt = chat_format(shapes("chatml"))
    enc = fmt.encode([{"role": "user", "content": "say <|im_end|> now"}], "ok <|im_start|>")
    eot, start = fmt.eot_id, fmt.tokenizer.convert_tokens_to_ids("<|im_start|>")
    # the template's own markers only: user turn end, reply end; <|im_start|> for the user and the assistant
    assert enc.input_ids.count(eot) == 2 and enc.input_ids.count(start) == 2


# ---------------------------------------------------------------------------------------------- truncation


def test_truncation_drops_earlier_turns_first_then_cuts_the_prompt(shapes):
    fmt = chat_format(shapes("chatml"))
    full = fmt.encode(MULTI)
    last_turn = fmt.encode([SYSTEM, *MULTI[3:]])
    enc = fmt.encode(MULTI, max_length=len(last_turn.input_ids))
    assert (enc.turns_dropped, enc.prompt_cut, enc.response_cut) == (1, 0, 0)
    assert enc.input_ids == last_turn.input_ids and len(enc.input_ids) < len(full.input_ids)
    # Shorter still: tokens go from the left of the prompt; the reply stays whole.
    enc = fmt.encode(MULTI, max_length=len(last_turn.input_ids) - 5)
    assert (enc.turns_dropped, enc.prompt_cut, enc.response_cut) == (1, 5, 0)
    assert enc.input_ids == last_turn.input_ids[5:] and enc.prompt_length == last_turn.prompt_length - 5


def test_truncation_keeps_bos_and_cuts_a_reply_only_when_it_alone_is_too_long(shapes):
    fmt = chat_format(shapes("llama3"))
    long_reply = "word " * 40
    enc = fmt.encode(SINGLE[:1], long_reply)
    reply = len(enc.input_ids) - enc.prompt_length
    cut = fmt.encode(SINGLE[:1], long_reply, max_length=reply + 4)
    bos = fmt.tokenizer.bos_token_id
    assert cut.input_ids[0] == bos and cut.input_ids[1:4] == enc.input_ids[enc.prompt_length - 3:enc.prompt_length]
    assert cut.response_cut == 0 and cut.prompt_cut == enc.prompt_length - 4
    tiny = fmt.encode(SINGLE[:1], long_reply, max_length=10)  # the reply alone exceeds: its end goes
    assert len(tiny.input_ids) == 10 and tiny.response_cut == reply - 8
    assert tiny.input_ids[:2] == [bos, enc.input_ids[enc.prompt_length - 1]]


def test_max_prompt_length(shapes):
    fmt = chat_format(shapes("chatml"))
    full = fmt.prompt_ids(MULTI[:-1])
    short = fmt.prompts_encoded([MULTI[:-1]], max_prompt_length=len(full) - 1)[0]
    assert short.turns_dropped == 1 and short.input_ids == fmt.prompt_ids([SYSTEM, MULTI[3]])
    enc = fmt.encode(MULTI[:-1], "Paris.", max_prompt_length=8)
    ref = fmt.encode([SYSTEM, MULTI[3]], "Paris.")
    assert (enc.prompt_length, enc.turns_dropped) == (8, 1)
    assert enc.input_ids[:8] == ref.input_ids[ref.prompt_length - 8:ref.prompt_length]
    assert enc.input_ids[8:] == ref.input_ids[ref.prompt_length:] and sum(enc.loss_mask) == len(enc.input_ids) - 8


def test_cut_to_fit_by_hand():
    # prompt [9 1 2 3] (9 = bos), reply [7 8]; max_length 5 keeps bos, the prompt's last 2 tokens, the reply.
    enc = Encoded([9, 1, 2, 3, 7, 8], [0, 0, 0, 0, 1, 1], 4)
    out = cut_to_fit(enc, 5, None, bos_id=9)
    assert (out.input_ids, out.loss_mask, out.prompt_length, out.prompt_cut) == ([9, 2, 3, 7, 8], [0, 0, 0, 1, 1], 3, 1)
    # max_length 3: the floor of the prompt is bos + its last token; the reply loses its end.
    out = cut_to_fit(enc, 3, None, bos_id=9)
    assert (out.input_ids, out.prompt_length, out.response_cut) == ([9, 3, 7], 2, 1)


def test_bad_rows_raise_data_errors(tok):
    fmt = chat_format(tok)
    with pytest.raises(DataError, match=r"messages\[1\]\.role"):
        fmt.encode([{"role": "user", "content": "hi"}, {"role": "bot", "content": "x"}])
    with pytest.raises(DataError, match="must end with an assistant turn"):
        fmt.encode([{"role": "user", "content": "hi"}])
    with pytest.raises(DataError, match="empty"):
        fmt.encode_many([(SINGLE, None), ([], None)])


# ---------------------------------------------------------------------------------------------- templates in the wild

PHI3 = ("{% for m in messages %}{% if m['role'] == 'system' %}{{ '<|system|>\n' + m['content'] + '<|end|>\n' }}"
        "{% elif m['role'] == 'user' %}{{ '<|user|>\n' + m['content'] + '<|end|>\n' }}{% else %}"
        "{{ '<|assistant|>\n' + m['content'] + '<|end|>\n' }}{% endif %}{% endfor %}"
        "{% if add_generation_prompt %}{{ '<|assistant|>\n' }}{% else %}{{ eos_token }}{% endif %}")
"""Phi-3's shape: eos closes a conversation after its last turn, so an earlier turn's render ends differently."""
OUTSIDE = ("{% for m in messages %}{{ '<|im_start|>' + m['role'] + '\n' }}{% if m['role'] == 'assistant' %}"
           "{% generation %}{{ m['content'] }}{% endgeneration %}{% else %}{{ m['content'] }}{% endif %}"
           "{{ '<|im_end|>\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}")
"""A {% generation %} block that leaves the end-of-turn token just outside it, as many shipped templates do."""


def _template_file(tmp_path, name, text):
    path = tmp_path / f"{name}.jinja"
    path.write_text(text)
    return str(path)


def _trained_texts(fmt, enc):
    runs, run = [], []
    for t, m in zip(enc.input_ids, enc.loss_mask):
        if m:
            run.append(t)
        elif run:
            runs, run = runs + [run], []
    return [fmt.tokenizer.decode(r) for r in runs + ([run] if run else [])]


def test_a_template_that_closes_the_conversation_with_eos(shapes, tmp_path):
    tk = shapes("chatml")
    tk.add_special_tokens({"additional_special_tokens": ["<|end|>"]})
    fmt = ChatFormat(tk, _template_file(tmp_path, "phi3", PHI3))
    assert fmt.eot_text == "<|end|>"
    enc = fmt.encode(MULTI)
    assert _trained_texts(fmt, enc) == [" How can I help you today? <|end|>", "Paris.<|end|>"]


def test_a_generation_block_without_its_end_token_still_trains_it(shapes, tmp_path):
    fmt = ChatFormat(shapes("chatml"), _template_file(tmp_path, "outside", OUTSIDE))
    assert fmt.markers and fmt.eot_text == "<|im_end|>"
    enc = fmt.encode(MULTI)
    assert _trained_texts(fmt, enc) == [" How can I help you today? <|im_end|>", "Paris.<|im_end|>"]


def test_none_is_saved_with_the_model_so_later_stages_read_plain_text(shapes, tmp_path):
    tk = shapes("chatml")
    assert tk.chat_template
    ChatFormat(tk, "none")
    tk.save_pretrained(tmp_path / "plain")
    reloaded = type(tk).from_pretrained(tmp_path / "plain")
    assert not reloaded.chat_template and chat_format(reloaded).template is None


def test_both_responses_of_a_pair_follow_the_same_prompt_tokens(shapes):
    fmt = chat_format(shapes("chatml"))  # no bos: one prompt token is the floor
    long_a, long_b = "word " * 18, "word " * 14
    a, b = (len(fmt.encode("x", r).input_ids) - fmt.encode("x", r).prompt_length for r in (long_a, long_b))
    for max_length in (a + 1, a + 3, a + 6):
        ea, eb = fmt.encode_pairs([(MULTI[:-1], long_a, long_b)], max_length)[0]
        assert ea.input_ids[:ea.prompt_length] == eb.input_ids[:eb.prompt_length] and not ea.response_cut
        assert len(ea.input_ids) == max_length


def test_turns_of_one_role_in_a_row_are_joined_only_for_a_template_that_refuses_them(shapes):
    # 4 of the 2,312 real HH-RLHF rows have two user turns in a row; Gemma's own template raises on them
    twice = [{"role": "user", "content": "Hi."}, {"role": "user", "content": "Are you there?"}]
    joined = [{"role": "user", "content": "Hi.\n\nAre you there?"}]
    gemma = chat_format(shapes("gemma"))
    assert gemma.encode(twice, "Yes.") == gemma.encode(joined, "Yes.")
    assert gemma.prompt_ids(twice) == gemma.prompt_ids(joined)
    assert merged_turns(joined) is None and merged_turns("text") is None
    chatml = chat_format(shapes("chatml"))  # accepts them: each turn stays its own
    assert chatml.render(twice, "Yes.").count("<|im_start|>user") == 2
    with pytest.raises(DataError, match="chat template .*alternate"):  # an assistant reply cannot be merged away
        gemma.encode([{"role": "assistant", "content": "a"}, {"role": "user", "content": "b"}], "c")


def test_a_template_without_a_generation_prompt_is_refused(shapes, tmp_path):
    nogen = tmp_path / "nogen.jinja"  # chatml without its add_generation_prompt block
    nogen.write_text("{% for m in messages %}{{ '<|im_start|>' + m['role'] + '\n' + m['content'] + '<|im_end|>\n' }}"
                     "{% endfor %}")
    with pytest.raises(ConfigError, match="chat_template: .*writes nothing for add_generation_prompt, but its replies "
                                          "start with a header"):
        chat_format(shapes("chatml"), str(nogen)).encode(SINGLE)
    # Mistral's and Llama-2's templates have no generation block either: the user turn's [/INST] ends the prompt and
    # the reply follows it directly, so nothing but the reply is trained
    inst = tmp_path / "inst.jinja"
    inst.write_text("{{ bos_token }}{% for m in messages %}{% if m['role'] == 'user' %}{{ '[INST] ' + m['content'] + "
                    "' [/INST]' }}{% else %}{{ ' ' + m['content'] + eos_token }}{% endif %}{% endfor %}")
    fmt = chat_format(shapes("llama3"), str(inst))
    enc = fmt.encode(SINGLE)
    reply = fmt.tokenizer.decode([t for t, m in zip(enc.input_ids, enc.loss_mask) if m])
    assert reply.strip().startswith(SINGLE[-1]["content"][:5]) and "INST" not in reply
