"""Tokens to text while they are sampled: incremental detokenisation and stop strings (no torch).

Decoding the whole response again at every step costs O(length^2); decoding only a small window is what
text-generation-inference and vLLM do (TGI `Model.decode_token`): keep a window of tokens starting at
`prefix`, decode it with and without the tokens after `read`, and append the difference once it no longer ends
in U+FFFD (a multi-byte character cut between tokens). A window starting on a token boundary decodes the same
way inside the whole text for byte-level and SentencePiece tokenizers alike (the leading-space rule of
SentencePiece applies to both decodes of the window, so it cancels).

Stop strings (OpenAI's `stop`): the text ends before the first occurrence of any of them. While streaming, the
tail that could still grow into a stop string is held back, so a client never receives text that the stop
string later removes; the pieces a request receives therefore join to exactly the text of the non-streamed
request.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence

REPLACEMENT = "\ufffd"


class TextStream:
    """The text of one response, built token by token; `take()` returns what is new and safe to send."""

    def __init__(self, decode: Callable[[list[int]], str], stops: Sequence[str] = ()):
        self.decode, self.stops = decode, tuple(s for s in stops if s)
        self.ids: list[int] = []
        self.text = ""
        """The text so far, cut before a stop string once one is found."""
        self.stopped = False
        """A stop string was found: no more text is added."""
        self._prefix = self._read = 0  # the window ids[prefix:] decodes; ids[prefix:read] are already in text
        self._sent = 0  # characters of text already returned by take()

    def add(self, token: int) -> bool:
        """Append one token; True when the text now holds a stop string (the text is cut before it)."""
        if self.stopped:
            return True
        self.ids.append(token)
        before = self.decode(self.ids[self._prefix:self._read])
        window = self.decode(self.ids[self._prefix:])
        if len(window) > len(before) and not window.endswith(REPLACEMENT):
            self._extend(window[len(before):])
            self._prefix, self._read = self._read, len(self.ids)
        return self.stopped

    def flush(self) -> bool:
        """The response ends: add what the window still holds (even a cut character); True on a stop string."""
        if not self.stopped and self._read < len(self.ids):
            before = self.decode(self.ids[self._prefix:self._read])
            self._extend(self.decode(self.ids[self._prefix:])[len(before):])
            self._prefix = self._read = len(self.ids)
        return self.stopped

    def take(self, final: bool = False) -> str:
        """The text not yet taken; while not `final`, without a tail that may still become a stop string."""
        end = len(self.text) if final or self.stopped else len(self.text) - self._held()
        piece = self.text[self._sent:end]
        self._sent = max(self._sent, end)
        return piece

    def _extend(self, new: str) -> None:
        start = max(0, len(self.text) - max((len(s) for s in self.stops), default=0) + 1)
        self.text += new
        found = [i for i in (self.text.find(s, start) for s in self.stops) if i >= 0]
        if found:
            self.text, self.stopped = self.text[:min(found)], True

    def _held(self) -> int:
        """Length of the longest tail of the text that is a proper prefix of a stop string."""
        return max((k for s in self.stops for k in range(1, len(s)) if self.text.endswith(s[:k])), default=0)
