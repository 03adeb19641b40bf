"""Chat templates tether ships, and the `chat_template` setting that picks one (tether.chat applies them).

The setting: "" (the default) takes the tokenizer's own chat template; a built-in name (`TEMPLATES`); a path to a .jinja
file; or "none" for plain text even when the tokenizer has a template. Each built-in marks its replies with
`{% generation %}` and closes them with an end-of-turn token, which tether.chat trains and stops on.
"""
from __future__ import annotations

import os
from tether.errors import ConfigError

TETHER = (
    "{{ bos_token }}"
    "{% for m in messages %}"
    "{% if m['role'] == 'assistant' %}"
    "{{ '<|assistant|>' }}{% generation %}{{ m['content'] }}{{ eos_token }}{% endgeneration %}"
    "{% elif m['role'] == 'system' %}{{ '<|system|>' }}{{ m['content'] }}"
    "{% elif m['role'] == 'user' %}{{ '<|user|>' }}{{ m['content'] }}"
    "{% else %}{{ raise_exception('unknown role: ' + m['role']) }}"
    "{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>' }}{% endif %}"
)
"""tether's own format (the tiny world's tokenizer): `<bos><|system|>...<|user|>...<|assistant|>...<eos>`."""

CHATML = (
    "{% for m in messages %}{{ '<|im_start|>' + m['role'] + '\n' }}"
    "{% if m['role'] == 'assistant' %}{% generation %}{{ m['content'] + '<|im_end|>' }}{% endgeneration %}{{ '\n' }}"
    "{% else %}{{ m['content'] + '<|im_end|>\n' }}{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
"""ChatML (Qwen2, many fine-tunes): needs `<|im_start|>` and `<|im_end|>` as tokens of the tokenizer."""

LLAMA3 = (
    "{{ bos_token }}{% for m in messages %}{{ '<|start_header_id|>' + m['role'] + '<|end_header_id|>\n\n' }}"
    "{% if m['role'] == 'assistant' %}{% generation %}{{ m['content'] | trim + '<|eot_id|>' }}{% endgeneration %}"
    "{% else %}{{ m['content'] | trim + '<|eot_id|>' }}{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}"
)
"""Llama-3 (without its tool and date preamble)."""

GEMMA = (
    "{{ bos_token }}{% set ns = namespace(system='') %}{% for m in messages %}"
    "{% if m['role'] == 'system' %}{% set ns.system = m['content'] | trim + '\n\n' %}"
    "{% elif m['role'] == 'user' %}{{ '<start_of_turn>user\n' + ns.system + m['content'] | trim + "
    "'<end_of_turn>\n' }}{% set ns.system = '' %}"
    "{% else %}{{ '<start_of_turn>model\n' }}{% generation %}{{ m['content'] | trim + '<end_of_turn>' }}"
    "{% endgeneration %}{{ '\n' }}{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<start_of_turn>model\n' }}{% endif %}"
)
"""Gemma 2/3: the assistant is "model"; a system message is folded into the first user turn, as Gemma 3 does."""

ZEPHYR = (
    "{% for m in messages %}{{ '<|' + m['role'] + '|>\n' }}"
    "{% if m['role'] == 'assistant' %}{% generation %}{{ m['content'] + eos_token }}{% endgeneration %}{{ '\n' }}"
    "{% else %}{{ m['content'] + eos_token + '\n' }}{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>\n' }}{% endif %}"
)
"""Zephyr (and TRL's default chat format for base models): role lines, every turn closed by eos."""

HH = (
    "{% for m in messages %}{% if m['role'] == 'assistant' %}{{ '\n\nAssistant:' }}"
    "{% generation %}{{ ' ' + m['content'] + eos_token }}{% endgeneration %}"
    "{% elif m['role'] == 'user' %}{{ '\n\nHuman: ' + m['content'] }}{% else %}{{ m['content'] }}{% endif %}"
    "{% endfor %}{% if add_generation_prompt %}{{ '\n\nAssistant:' }}{% endif %}"
)
"""Anthropic HH-RLHF's own text ("\\n\\nHuman: ...\\n\\nAssistant: ..."), replies closed by eos: for base models and
tokenizers without any chat tokens (GPT-2)."""

TEMPLATES = {"chatml": CHATML, "llama3": LLAMA3, "gemma": GEMMA, "zephyr": ZEPHYR, "hh": HH, "tether": TETHER}
PLAIN = "none"
CHAT_TEMPLATE_HELP = (f"a built-in name ({', '.join(TEMPLATES)}), a .jinja file, '{PLAIN}' (plain text), or empty "
                      "(the tokenizer's own template)")


def check_template_setting(value: str, field: str = "chat_template") -> None:
    """Raise ConfigError unless `value` names a built-in template, an existing .jinja file, "none" or ""."""
    if value in ("", PLAIN) or value in TEMPLATES:
        return
    if value.endswith(".jinja") or os.sep in value:
        if not os.path.isfile(value):
            raise ConfigError(f"{field}: template file not found: {value}")
        return
    raise ConfigError(f"{field}: {value!r} is not {CHAT_TEMPLATE_HELP}")


def resolve_template(tokenizer, setting: str = "") -> tuple[str | None, str]:
    """(template text or None for plain text, a name for messages) from the `chat_template` setting."""
    check_template_setting(setting)
    if setting == PLAIN:
        return None, "plain text"
    if setting in TEMPLATES:
        return TEMPLATES[setting], setting
    if setting:
        with open(setting, encoding="utf-8") as f:
            return f.read(), setting
    if getattr(tokenizer, "chat_template", None):
        return tokenizer.get_chat_template(), "the tokenizer's own template"
    return None, "plain text"
