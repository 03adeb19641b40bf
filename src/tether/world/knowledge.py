"""The tiny world's knowledge base: invented countries whose facts exist only in our own corpus.

Every name is made up from syllables with a seeded RNG, so no pretrained model can know these facts:
whatever a policy knows about them it learned from `tether.world.corpus`.

Common and obscure facts. People know some facts and not others: the capital and language of a well-known
country are common knowledge; its currency, and anything about the other countries, are obscure
(`Knowledge.is_common`). The simulated raters check common facts and mostly cannot check obscure ones
(`tether.world.raters`). Which countries are well known is a seeded draw of its own, so adding it left every name
and fact of a seed unchanged; the corpus mentions every country equally (the model's knowledge does not follow
fame: only the raters' does).
"""
from __future__ import annotations

import random
from dataclasses import dataclass

ONSETS = ["b", "d", "f", "g", "k", "l", "m", "n", "p", "r", "s", "t", "v", "z", "br", "dr", "gr", "kr",
          "tr", "st", "sh", "th", "qu", "vel", "mar"]
VOWELS = ["a", "e", "i", "o", "u", "ai", "ou", "ei"]
CODAS = ["", "", "n", "r", "l", "s", "m", "th", "nd", "sk"]
COUNTRY_ENDINGS = ["ia", "ar", "and", "ora", "esh", "ovia", "ica"]
CITY_ENDINGS = ["ton", "burg", "mar", "opol", "ville", "hold", "en"]
LANGUAGE_ENDINGS = ["ish", "ese", "ic", "ian"]
CURRENCY_ENDINGS = ["ral", "ek", "o", "un"]

# The attributes a fact question can ask about, in a fixed order (prompt templates index them).
ATTRIBUTES = ("capital", "language", "currency")
COMMON_ATTRIBUTES = ("capital", "language")
"""The attributes of a well-known country that are common knowledge (a currency is obscure everywhere)."""


@dataclass(frozen=True)
class Country:
    """One invented country and its facts."""

    name: str
    capital: str
    language: str
    currency: str

    def fact(self, attribute: str) -> str:
        return getattr(self, attribute)


@dataclass(frozen=True)
class Knowledge:
    """Everything the world knows, and the names it deliberately does not know.

    `unknown_*` are country names that never appear in the pretraining corpus' facts: three disjoint
    pools so that pretraining, SFT and evaluation each meet names the others never saw.
    """

    countries: tuple[Country, ...]
    languages: tuple[str, ...]
    currencies: tuple[str, ...]
    unknown_pretrain: tuple[str, ...]
    unknown_sft: tuple[str, ...]
    unknown_eval: tuple[str, ...]
    well_known: tuple[str, ...] = ()
    """Names of the well-known countries: their COMMON_ATTRIBUTES are common knowledge."""

    def is_common(self, country: str, attribute: str) -> bool:
        """Whether most people know this fact: an attribute in COMMON_ATTRIBUTES of a well-known country."""
        return country in self.well_known and attribute in COMMON_ATTRIBUTES

    def country(self, name: str) -> Country | None:
        return {c.name: c for c in self.countries}.get(name)

    def values(self, attribute: str) -> tuple[str, ...]:
        """All values an answer about `attribute` could name (to spot wrong answers)."""
        if attribute == "capital":
            return tuple(c.capital for c in self.countries)
        return self.languages if attribute == "language" else self.currencies


def _word(rng: random.Random, endings: list[str], syllables: tuple[int, int]) -> str:
    parts = [rng.choice(ONSETS) + rng.choice(VOWELS) + rng.choice(CODAS)
             for _ in range(rng.randint(*syllables))]
    return ("".join(parts) + rng.choice(endings)).capitalize()


def _distinct_words(rng: random.Random, n: int, endings: list[str], taken: set[str],
                    syllables: tuple[int, int] = (1, 2)) -> list[str]:
    """n new names, none equal to or containing another name (so substring checks stay unambiguous)."""
    out: list[str] = []
    while len(out) < n:
        w = _word(rng, endings, syllables)
        low = w.lower()
        if 4 <= len(w) <= 11 and not any(low in t.lower() or t.lower() in low for t in taken):
            taken.add(w)
            out.append(w)
    return out


def build_knowledge(seed: int, n_countries: int, n_languages: int = 10, n_currencies: int = 10,
                    n_unknown: int = 30, well_known_share: float = 0.5) -> Knowledge:
    """A deterministic knowledge base: the same seed always gives the same world. `well_known_share` of the
    countries (rounded) are well known, drawn by an RNG of their own."""
    rng = random.Random(seed)
    taken: set[str] = set()
    names = _distinct_words(rng, n_countries, COUNTRY_ENDINGS, taken)
    capitals = _distinct_words(rng, n_countries, CITY_ENDINGS, taken)
    languages = _distinct_words(rng, n_languages, LANGUAGE_ENDINGS, taken, (1, 1))
    currencies = [w.lower() for w in _distinct_words(rng, n_currencies, CURRENCY_ENDINGS, taken, (1, 1))]
    unknown = _distinct_words(rng, 3 * n_unknown, COUNTRY_ENDINGS, taken)
    countries = tuple(Country(n, c, rng.choice(languages), rng.choice(currencies))
                      for n, c in zip(names, capitals))
    famous = random.Random(f"well-known/{seed}").sample(names, round(well_known_share * n_countries))
    return Knowledge(countries, tuple(languages), tuple(currencies), tuple(unknown[:n_unknown]),
                     tuple(unknown[n_unknown:2 * n_unknown]), tuple(unknown[2 * n_unknown:]),
                     tuple(n for n in names if n in famous))
