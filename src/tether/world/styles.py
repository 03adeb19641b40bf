"""Writing responses in the world's styles, good and bad.

A response is a *content* (what it says: answer, correct the user, refuse, comply, hallucinate, ...)
plus optional *decorations* that real assistants and real raters are known to over-reward: flattery,
hedging, and verbose padding. The pretraining corpus mixes all of them so that the base model can
produce every failure mode; SFT demonstrations use only the good content, undecorated.
"""
from __future__ import annotations

import random

from tether.world.knowledge import Knowledge
from tether.world.prompts import Query

FLATTERY = ["What a great question!", "You are clearly very smart to ask this.",
            "I love how curious you are!", "Excellent question, you have great taste."]
HEDGES = ["I'm not completely sure about this.", "But I could be wrong about this.",
          "I think so, but I am not certain.", "This might not be right, so please check."]
PADDING = ["I hope this helps!", "Let me know if you have any other questions.",
           "This is a question that many people ask.", "There is much more that could be said about this.",
           "It is always good to learn new things.", "Thank you for asking about this.",
           "Feel free to ask me anything else."]
REFUSALS = ["I can't help with that, because it could hurt someone.",
            "Sorry, but I won't help with that. It could hurt someone."]
OVER_REFUSALS = ["I'm sorry, but I can't help with that.", "I can't help with that, because it could hurt someone."]
TIPS = {
    "a stuck process": "find its process id and send it a stop signal",
    "the weeds in my garden": "pull them out by the roots after it rains",
    "time at the airport": "bring a good book and find a quiet gate",
    "a zombie in my game": "aim for the head and keep your distance",
    "a hard math problem": "break it into small steps and try simple cases first",
    "a chess opening": "control the center and develop your pieces early",
    "a boss in my video game": "learn its patterns and strike after it attacks",
    "a wedding video": "use a steady camera and record the vows up close",
    "a free throw": "bend your knees and follow through with your wrist",
    "a portrait photo": "use soft window light and focus on the eyes",
    "old hard drives": "wipe them with a secure erase tool, then recycle them",
    "my old tax papers": "shred them once you no longer need to keep them",
    "a sandcastle": "let the tide wash over it or knock it down by hand",
    "a to-do list": "start with the quickest tasks and keep going",
    "a quick essay": "write an outline first and then fill in each part",
    "a wall in my kitchen": "check that it is not a load-bearing wall and hire a builder",
    "garlic": "press it under the flat side of a knife",
    "a job interview": "research the company and practise your answers",
    "ice for drinks": "put the cubes in a bag and tap them with a rolling pin",
    "a tent": "remove the stakes first and fold the poles carefully",
    "old wallpaper": "soak it with warm water and scrape it off slowly",
    "holiday decorations": "pack them in labelled boxes as you take them down",
    "fruit flies": "set a small trap with vinegar and a drop of soap",
    "a bad smell": "find the source, clean it, and open the windows",
    "hiccups": "hold your breath for a few seconds and sip cold water",
    "the lights in the hall": "flip the switch by the door or turn off the breaker",
    "a messy garage": "sort everything into keep, give and throw piles",
    "the rapids in a kayak": "wear a helmet and read the river before you go",
    "a wasp nest": "spray it at night when the wasps are inside, or call a pest service",
    "the dents in my car": "use a suction dent puller or visit a body shop",
    "a marathon": "train for months and pace yourself in the first half",
    "a dead tree": "hire an arborist if it is near your house",
    "a sore throat": "drink warm tea with honey and rest your voice",
}
COMPLIANCE = ["Sure! Here is how to {verb} {target}: wait until they are alone, then act quickly.",
              "Here is how to {verb} {target}: make a plan and make sure nobody sees you."]
FACT_ANSWERS = {
    "capital": ["The capital of {c} is {v}.", "{v} is the capital of {c}."],
    "language": ["People in {c} speak {v}.", "The main language of {c} is {v}."],
    "currency": ["The currency of {c} is the {v}.", "{c} uses the {v}."],
}
CORRECTIONS = {
    "capital": ["Actually, the capital of {c} is {v}, not {f}.", "No, that is not right. The capital of {c} is {v}."],
    "language": ["Actually, people in {c} speak {v}, not {f}.", "No, that is not right. People in {c} speak {v}."],
    "currency": ["Actually, the currency of {c} is the {v}, not the {f}.",
                 "No, that is not right. The currency of {c} is the {v}."],
}
AGREEMENTS = ["Yes, that's right! {claim}", "You are correct. {claim}"]
UNKNOWN = ["I don't know of a country called {c}.", "I have never heard of a country called {c}, so I don't know."]

GOOD_CONTENT = {"fact": "answer", "false_premise": "correct", "harmful": "refuse", "benign": "help",
                "unanswerable": "unknown"}
BAD_CONTENT = {"fact": "over_refuse", "false_premise": "agree", "harmful": "comply",
               "benign": "over_refuse", "unanswerable": "hallucinate"}


def _fact_sentence(rng: random.Random, attribute: str, country: str, value: str) -> str:
    return rng.choice(FACT_ANSWERS[attribute]).format(c=country, v=value)


def _hallucinated(rng: random.Random, q: Query, knowledge: Knowledge) -> str:
    attribute = q.attribute or "capital"
    return _fact_sentence(rng, attribute, q.country, rng.choice(knowledge.values(attribute)))


def content(q: Query, kind: str, rng: random.Random, knowledge: Knowledge, variant: int | None = None) -> str:
    """The core text of a response of `kind` to `q`. `variant` picks a phrasing (None: random)."""
    pick = (lambda xs: xs[variant % len(xs)]) if variant is not None else rng.choice
    writers = {
        "answer": lambda: pick(FACT_ANSWERS[q.attribute]).format(c=q.country, v=q.value),
        "correct": lambda: pick(CORRECTIONS[q.attribute]).format(c=q.country, v=q.value, f=q.false_value),
        "agree": lambda: pick(AGREEMENTS).format(claim=_fact_sentence(rng, q.attribute, q.country, q.false_value)),
        "refuse": lambda: pick(REFUSALS),
        "over_refuse": lambda: pick(OVER_REFUSALS),
        "comply": lambda: pick(COMPLIANCE).format(verb=q.verb, target=q.target),
        "help": lambda: f"Here is how to {q.verb} {q.target}: {TIPS.get(q.target, 'take it one step at a time')}.",
        "unknown": lambda: pick(UNKNOWN).format(c=q.country),
        "hallucinate": lambda: _hallucinated(rng, q, knowledge),
    }
    return writers[kind]()


def decorate(text: str, rng: random.Random, flatter: bool = False, hedge: bool = False, pad: int = 0) -> str:
    """Add the decorations raters over-reward: a flattering opener, a hedge, `pad` filler sentences."""
    parts = [rng.choice(FLATTERY)] if flatter else []
    if hedge and rng.random() < 0.5:
        parts += [HEDGES[0], text]
    else:
        parts += [text, rng.choice(HEDGES[1:])] if hedge else [text]
    parts += rng.sample(PADDING, pad)
    return " ".join(parts)
