"""tether.judge.constitution: the default constitution, strict validation with file:line: field errors, the prompt."""
from __future__ import annotations

import textwrap

import pytest

from tether.errors import DataError
from tether.judge.constitution import DEFAULT, PAIRWISE_TEMPLATE, load_constitution

GOOD = """\
name: mine
version: 1.10
principles:
  - id: honest
    critique: Find what is false.
    revision: Rewrite it truthfully.
    question: Which response is more honest?
  - id: brief
    critique: Find the padding.
    revision: Rewrite it briefly.
    question: Which response is more concise?
    source: written for this test
"""


def write(tmp_path, text: str):
    path = tmp_path / "c.yaml"
    path.write_text(textwrap.dedent(text))
    return path


def test_the_default_constitution_loads_with_its_principles():
    c = load_constitution()
    assert c.path == str(DEFAULT) and c.version == "1" and c.name == "tether-default"
    assert [p.id for p in c.principles] == ["hhh", "harmless", "helpful", "honest", "no_sycophancy", "no_flattery"]
    assert all(p.critique and p.revision and p.question for p in c.principles)
    assert c.principle("hhh").question == "Please choose the response that is the most helpful, honest, and harmless."
    assert c.pairwise_template == PAIRWISE_TEMPLATE and len(c.sha256) == 64


def test_a_good_file_keeps_the_version_as_written(tmp_path):
    c = load_constitution(write(tmp_path, GOOD))
    assert c.version == "1.10"  # not the float 1.1
    assert [p.id for p in c.principles] == ["honest", "brief"]
    assert c.principle("brief").source == "written for this test" and c.principle("honest").source == ""
    assert c.principle("honest").critique == "Find what is false."


def test_the_pairwise_prompt_by_hand():
    c = load_constitution()
    text = c.pairwise_prompt(c.principle("honest"), [{"role": "user", "content": "Hi"},
                                                     {"role": "assistant", "content": "Hello."},
                                                     {"role": "user", "content": "Capital of France?"}],
                             "Paris.", "Lyon.")
    assert text == ("Consider the following conversation between a user and an assistant.\n\n"
                    "User: Hi\nAssistant: Hello.\nUser: Capital of France?\n\n"
                    + c.principle("honest").question + "\n\nResponse A: Paris.\n\nResponse B: Lyon.\n\n"
                    "Answer with A or B.")
    # braces in a response are text, not placeholders
    assert "Response A: {question}" in c.pairwise_prompt(c.principles[0], "Q?", "{question}", "b")


BAD = [
    # (what to change in GOOD, the exact error after the file name)
    (("version: 1.10\n", ""), "1: version: missing"),
    (("version: 1.10", "version:"), "2: version: expected a string, got null"),
    (("version: 1.10", "version: [1]"), "2: version: expected a string, got a list"),
    (("name: mine", "nmae: mine"), "1: nmae: unknown field (did you mean 'name'?); allowed: name, version, "
                                   "description, pairwise_template, principles"),
    (("name: mine\n", "name: mine\nname: again\n"), "2: name: given twice (first at line 1)"),
    (("    question: Which response is more honest?\n", ""), "4: principles[0].question: missing"),
    (("    question: Which response is more concise?", "    question: ''"), "11: principles[1].question: empty"),
    (("    critique: Find the padding.", "    critique: {a: 1}"),
     "9: principles[1].critique: expected a string, got a mapping"),
    (("    revision: Rewrite it briefly.", "    revision: 3"),
     "10: principles[1].revision: expected a string, got a number"),
    (("  - id: brief", "  - id: honest"), "8: principles[1].id: 'honest' repeats principles[0].id"),
    (("  - id: brief", "  - id: be brief"), "8: principles[1].id: 'be brief': use letters, digits, _ and - only"),
    (("    source: written for this test", "    sauce: x"),
     "12: principles[1].sauce: unknown field (did you mean 'source'?); allowed: id, critique, revision, question, "
     "source"),
    (("  - id: honest\n", "  - ide: honest\n"), "4: principles[0].ide: unknown field (did you mean 'id'?); allowed: "
                                                 "id, critique, revision, question, source"),
]


@pytest.mark.parametrize("change, error", BAD)
def test_bad_files_stop_with_file_line_field(tmp_path, change, error):
    path = write(tmp_path, GOOD.replace(*change, 1))
    with pytest.raises(DataError) as info:
        load_constitution(path)
    assert str(info.value) == f"{path}:{error}"


@pytest.mark.parametrize("text, error", [
    ("", "1: <document>: empty, expected a mapping with version and principles"),
    ("- a\n- b\n", "1: <document>: expected a mapping, got a list"),
    ("version: '1'\nprinciples: []\n", "2: principles: empty: give at least one principle"),
    ("version: '1'\nprinciples: honest\n", "2: principles: expected a list of principles, got a string"),
    ("version: '1'\nprinciples:\n  - honest\n", "3: principles[0]: expected a mapping, got a string"),
    ("version: '1'\nprinciples: [\n", "3: <yaml>: expected the node content, but found '<stream end>'"),
])
def test_bad_documents(tmp_path, text, error):
    path = write(tmp_path, text)
    with pytest.raises(DataError) as info:
        load_constitution(path)
    assert str(info.value) == f"{path}:{error}"


@pytest.mark.parametrize("template, error", [
    ("{conversation} {question} {response_a}", "missing placeholder {response_b}"),
    ("{conversation} {question} {response_a} {response_b} {principle}",
     "unknown placeholder {principle}; allowed: {conversation}, {question}, {response_a}, {response_b}"),
    ("{conversation} {question} {response_a} {response_b} }", "Single '}' encountered in format string "
                                                                "(write {{ and }} for literal braces)"),
])
def test_bad_templates(tmp_path, template, error):
    path = write(tmp_path, GOOD + f"pairwise_template: '{template}'\n")
    with pytest.raises(DataError) as info:
        load_constitution(path)
    assert str(info.value) == f"{path}:13: pairwise_template: {error}"


def test_a_custom_template_is_used(tmp_path):
    c = load_constitution(write(tmp_path, GOOD + "pairwise_template: '{question}|{conversation}|{response_a}|"
                                                 "{response_b}|{{x}}'\n"))
    assert c.pairwise_prompt(c.principles[0], "Q?", "a", "b") == "Which response is more honest?|User: Q?|a|b|{x}"


def test_missing_file(tmp_path):
    with pytest.raises(DataError, match=r"nope\.yaml: file not found"):
        load_constitution(tmp_path / "nope.yaml")
