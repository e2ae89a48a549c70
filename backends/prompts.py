"""Prompts of exact token length for the real backend (DESIGN §5).

Token-id prompts (the default): vLLM accepts `prompt` as a list of token ids and adds no BOS to
it, so a list of `n` ids is a prompt of exactly `n` tokens. Ids are drawn from a range that is
ordinary text in every common tokenizer (no special tokens), deterministically from the seed
and the request id, so the same trace and seed always send the same prompts. Requests that
share `prefix_blocks` hash ids share the token ids of those blocks (block size
`trace.meta["prefix_block_tokens"]`), which is what lets a server's prefix cache hit.

Text prompts (chat, or servers that take no ids) are words drawn the same way and fitted to the
server's tokenizer through its `/tokenize` endpoint when it has one (see `TextFitter`).
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np

from twinbench.traces.core import Trace

# Ids in this range are plain text pieces in Llama, Qwen, Mistral, GPT-2 and the tiny test
# tokenizer alike (specials sit at the ends of those vocabularies).
DEFAULT_ID_RANGE = (256, 4000)
DEFAULT_BLOCK_TOKENS = 16

# Short common words: most tokenizers make each (with its leading space) a single token, so
# a first guess of one token per word is close and few /tokenize round trips are needed.
WORDS = tuple("""the of and to in is that for it as was with be by on not he this are or his
from at which but have an they you were her she there one all we their has been if more when
will would who so no out up into do than time can only other new some could these two may then
first any my now such like our over man me even most made after also did many before must
through back years where much your way well down should because each just those people how too
little state good very make world still own see men work long get here between both life being
under never day same another know while last might us great old year off come since against go
came right used take three""".split())


def _seed_int(*parts: object) -> int:
    """A 64-bit integer from the given parts, stable across runs and Python processes."""
    h = hashlib.blake2b(repr(parts).encode(), digest_size=8)
    return int.from_bytes(h.digest(), "little")


_GOLDEN = np.uint64(0x9E3779B97F4A7C15)


def _mix(z: np.ndarray) -> np.ndarray:
    """SplitMix64's finaliser over a uint64 array (wrapping arithmetic): a fast, well-mixed
    counter-based generator, ~20x cheaper per request than building a NumPy Generator."""
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return z ^ (z >> np.uint64(31))


@dataclass(frozen=True)
class PromptBuilder:
    """Builds the prompt of trace row `i`: token ids (`ids`) or words (`words`)."""

    seed: int = 0
    block_tokens: int = DEFAULT_BLOCK_TOKENS
    id_range: tuple[int, int] = DEFAULT_ID_RANGE

    @staticmethod
    def for_trace(trace: Trace, seed: int, id_range: tuple[int, int] = DEFAULT_ID_RANGE
                  ) -> "PromptBuilder":
        block = int(trace.meta.get("prefix_block_tokens") or DEFAULT_BLOCK_TOKENS)
        return PromptBuilder(seed=seed, block_tokens=block, id_range=id_range)

    def _ids(self, keys: np.ndarray, n: int) -> np.ndarray:
        """`n` ids for each uint64 key (row-major: key 0's ids first)."""
        counters = np.arange(1, n + 1, dtype=np.uint64) * _GOLDEN
        z = _mix((keys[:, None] + counters[None, :]).ravel())
        low, high = self.id_range
        return (z % np.uint64(high - low)).astype(np.int64) + low

    def block_ids(self, block_hash: int) -> np.ndarray:
        """The token ids of one shared prefix block (same hash -> same ids, for any request)."""
        return self._block_ids(np.array([block_hash], dtype=np.int64))

    def _block_ids(self, hashes: np.ndarray) -> np.ndarray:
        base = np.uint64(_seed_int(self.seed, "block"))
        keys = _mix(hashes.astype(np.uint64) * _GOLDEN + base)
        return self._ids(keys, self.block_tokens)

    def token_ids(self, trace: Trace, i: int, length: int | None = None) -> list[int]:
        """Exactly `length` (default: the trace's prompt length) ids for row `i`."""
        n = int(trace.prompt_tokens[i]) if length is None else int(length)
        parts: list[np.ndarray] = []
        have = 0
        if trace.prefix_flat is not None:
            a, b = int(trace.prefix_offsets[i]), int(trace.prefix_offsets[i + 1])
            blocks = trace.prefix_flat[a:b][: -(-n // self.block_tokens)]
            if len(blocks):
                parts.append(self._block_ids(blocks))
                have = len(blocks) * self.block_tokens
        if have < n:  # the request's own tail, unique to it
            key = np.array([_seed_int(self.seed, "request", trace.request_id(i))],
                           dtype=np.uint64)
            parts.append(self._ids(key, n - have))
        ids = np.concatenate(parts)[:n] if len(parts) > 1 else \
            (parts[0][:n] if parts else np.empty(0, dtype=np.int64))
        return ids.tolist()

    def words(self, trace: Trace, i: int, count: int) -> list[str]:
        """`count` words for row `i`; shared prefix blocks map to shared leading words."""
        ids = self.token_ids(trace, i, count)
        return [WORDS[x % len(WORDS)] for x in ids]


def text_of(words: list[str]) -> str:
    return " ".join(words)


async def fit_words(builder: PromptBuilder, trace: Trace, i: int, target: int,
                    count_tokens, max_rounds: int = 8) -> tuple[str, int | None]:
    """Text for row `i` that the server's tokenizer counts as `target` tokens.

    `count_tokens(text) -> int | None` asks the server (`/tokenize`, including the chat
    template for chat requests); None means it cannot count, and the first guess (one token
    per word) is kept. Returns the text and the server's count for it (None if unknown).
    Word counts are corrected by the observed difference; tokenizers that merge words can
    leave the count one or two off, so the best count seen is returned.
    """
    words = max(1, target)
    best: tuple[int, str, int] | None = None
    for _ in range(max_rounds):
        text = text_of(builder.words(trace, i, words))
        got = await count_tokens(text)
        if got is None:
            return text, None
        if best is None or abs(got - target) < best[0]:
            best = (abs(got - target), text, got)
        if got == target:
            break
        words = max(1, words + (target - got))
    assert best is not None
    return best[1], best[2]
