"""KV block pools: a plain counter, or a prefix cache when requests carry prefix blocks.

Both mirror vLLM's `BlockPool` / `KVCacheManager` (vllm/v1/core/block_pool.py,
kv_cache_manager.py) as far as the scheduler can see: the number of free blocks (cached but
unreferenced blocks count as free and are evicted from the head of the free queue), prefix hits
of full blocks capped at `num_tokens - 1` (`get_computed_blocks`), blocks registered in the
cache as soon as they are allocated for computation (`allocate_slots` → `cache_blocks`), and
blocks freed tail first (`free`): hashed ones to the tail of the free queue, the others to its
front (`BlockPool.free_blocks`).

Prefix keys: a request's `prefix_blocks` (Mooncake-style chained hash ids, each covering
`block_tokens` prompt tokens) define the content of its first prompt tokens; KV block b of the
request is shareable when it lies fully inside that prefix, and its key is the request's adapter
(vLLM hashes the LoRA name into each block), the hash id covering its last token, and b. Full
blocks past the prefix (the rest of the prompt, outputs) are cached under private keys: only
the request itself finds them again, when it resumes after a preemption.
"""
from __future__ import annotations

from collections import OrderedDict, deque


class CountingPool:
    """No prefix caching: only the number of free blocks matters."""

    caching = False

    def __init__(self, usable_blocks: int, block_size: int):
        self.total = usable_blocks
        self.free = usable_blocks
        self.bs = block_size

    @property
    def used(self) -> int:
        return self.total - self.free

    def prefix_keys(self, prefix_blocks, prompt_tokens: int, block_tokens: int = 0,
                    adapter: int = -1, owner=None):
        return None

    def lookup(self, req, num_tokens: int):
        return 0, None

    def hit_blocks(self, hit) -> int:
        return 0

    def evictable(self, hit) -> int:
        return 0

    def admit(self, req, hit, total_blocks: int) -> None:
        self.free -= total_blocks
        req.blocks = total_blocks

    def grow(self, req, n: int) -> None:
        self.free -= n
        req.blocks += n

    def commit(self, req, upto_tokens: int) -> None:
        pass

    def take(self, n: int) -> None:
        """n blocks for requests whose counts are kept elsewhere (coalesced decodes)."""
        self.free -= n

    def release(self, req) -> None:
        self.free += req.blocks
        req.blocks = 0


class _Block:
    """A cached (hashed) physical KV block."""

    __slots__ = ("bid", "key", "ref", "seq")

    def __init__(self, bid: int, key):
        self.bid = bid
        self.key = key
        self.ref = 1
        self.seq = -1


class PrefixPool(CountingPool):
    """Prefix caching with vLLM's free-queue order (`BlockPool`, `FreeKVCacheBlockQueue`).

    Hashed blocks are objects; blocks that never got a hash (the partial last block) are
    anonymous and kept as runs of free-queue positions. Several physical blocks may carry the
    same key (computed twice), as in vLLM's `cached_block_hash_to_block`; a lookup takes the
    first one cached.
    """

    caching = True

    def __init__(self, usable_blocks: int, block_size: int):
        super().__init__(usable_blocks, block_size)
        self.seq = usable_blocks  # next free-queue position at the tail
        self.head_seq = 0         # free-queue positions before the head are negative
        self.anon_runs: deque[list[int]] = deque([[0, usable_blocks]])  # [first seq, count]
        self.cached_free: OrderedDict[int, _Block] = OrderedDict()  # evictable, by seq
        self.cache: dict = {}  # key -> {bid: block}, first cached first
        self._bid = 0
        self.hits = 0
        self.queries = 0

    def prefix_keys(self, prefix_blocks, prompt_tokens: int, block_tokens: int = 0,
                    adapter: int = -1, owner=None):
        """The request's block keys: (shared keys, owner root).

        Block b inside the shared prefix has the key (adapter, hash id covering its last token,
        b): the adapter is part of it because vLLM hashes the LoRA name into every block
        (`generate_block_hash_extra_keys`), so requests of different adapters never share.
        Every later full block (rest of the prompt, outputs) is private, key (root, b): only
        the request itself finds it again, when it resumes after a preemption.
        """
        shared: tuple = ()
        if prefix_blocks and block_tokens > 0:
            bs = self.bs
            shared_tokens = min(len(prefix_blocks) * block_tokens, prompt_tokens)
            shared = tuple((adapter, prefix_blocks[((b + 1) * bs - 1) // block_tokens], b)
                           for b in range(shared_tokens // bs))
        return shared, (adapter, owner)

    @staticmethod
    def _key(keys, b: int):
        shared, root = keys
        return shared[b] if b < len(shared) else (root, b)

    def lookup(self, req, num_tokens: int):
        """get_computed_blocks(): the longest run of cached full blocks, at most num_tokens-1."""
        keys = req.prefix
        if keys is None or req.computed:
            return 0, None
        limit = (num_tokens - 1) // self.bs
        cache = self.cache
        key = self._key
        hit: list = []
        while len(hit) < limit:
            blocks = cache.get(key(keys, len(hit)))
            if not blocks:
                break
            hit.append(next(iter(blocks.values())))
        self.queries += 1
        if not hit:
            return 0, None
        return len(hit) * self.bs, hit

    def hit_blocks(self, hit) -> int:
        return len(hit) if hit else 0

    def evictable(self, hit) -> int:
        return sum(1 for blk in hit if blk.ref == 0) if hit else 0

    def _pop(self, n: int) -> None:
        """Take n blocks from the head of the free queue, evicting cached ones."""
        self.free -= n
        runs, cf, cache = self.anon_runs, self.cached_free, self.cache
        while n:
            run: list[int] | None = runs[0] if runs else None
            if cf:
                blk = next(iter(cf.values()))
                if run is None or blk.seq < run[0]:
                    del cf[blk.bid]
                    same = cache[blk.key]
                    del same[blk.bid]
                    if not same:
                        del cache[blk.key]
                    n -= 1
                    continue
                take = min(n, run[1], blk.seq - run[0])
            else:
                assert run is not None  # nothing cached is free: the runs hold the n blocks
                take = min(n, run[1])
            run[0] += take
            run[1] -= take
            n -= take
            if not run[1]:
                runs.popleft()

    def admit(self, req, hit, total_blocks: int) -> None:
        held = []
        if hit:
            cf = self.cached_free
            for blk in hit:
                if blk.ref == 0:
                    del cf[blk.bid]
                    self.free -= 1
                blk.ref += 1
                held.append(blk)
            self.hits += len(hit)
        req.pool_blocks = held
        self._pop(total_blocks - len(held))
        req.blocks = total_blocks

    def grow(self, req, n: int) -> None:
        self._pop(n)
        req.blocks += n

    def take(self, n: int) -> None:
        self._pop(n)

    def commit(self, req, upto_tokens: int) -> None:
        """cache_blocks(): the request's full blocks up to `upto_tokens` get their keys."""
        keys = req.prefix
        if keys is None:
            return
        held = req.pool_blocks
        if held is None:
            held = req.pool_blocks = []
        full = upto_tokens // self.bs
        cache = self.cache
        key = self._key
        while len(held) < full:
            k = key(keys, len(held))
            blk = _Block(self._bid, k)
            self._bid += 1
            same = cache.get(k)
            if same is None:
                same = cache[k] = {}
            same[blk.bid] = blk
            held.append(blk)

    def release(self, req) -> None:
        """free(): last block first; hashed blocks to the free-queue tail (findable until
        evicted), blocks without a hash to its front. Blocks filled while decoding are cached
        first."""
        self.commit(req, min(req.computed, req.blocks * self.bs))
        held = req.pool_blocks or ()
        anon = req.blocks - len(held)
        if anon > 0:
            # BlockPool.free_blocks(): blocks without a hash go to the FRONT of the free
            # queue (LIFO reuse), hashed ones to the tail (LRU eviction)
            self.head_seq -= anon
            self.anon_runs.appendleft([self.head_seq, anon])
            self.free += anon
        cf = self.cached_free
        for blk in reversed(held):
            blk.ref -= 1
            if blk.ref == 0:
                blk.seq = self.seq
                self.seq += 1
                cf[blk.bid] = blk
                self.free += 1
        req.blocks = 0
        req.pool_blocks = None


def make_pool(usable_blocks: int, block_size: int, prefix_caching: bool) -> CountingPool:
    return PrefixPool(usable_blocks, block_size) if prefix_caching else CountingPool(usable_blocks, block_size)
