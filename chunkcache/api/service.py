"""The work behind the endpoints. Every method that touches the model runs on the model worker.

System prompts: chunks are precomputed behind the prompt prefix of a system text (the prefix is
part of each chunk's key). A request with another system text gets its own engine view (same
runner and store, its own prompt builder and chunk source): its chunks are computed behind the new
prefix on first use (reported as misses) and cached under their own keys, so KV is never reused
behind a prefix it was not computed for.
"""

from __future__ import annotations

import threading
from collections import Counter, OrderedDict
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from chunkcache.agents.runtime import AgentRuntime
from chunkcache.api.config import ServerConfig
from chunkcache.api.schemas import ChunkRef, GenerationOptions
from chunkcache.blend.config import FUSED_MODES, BlendConfig
from chunkcache.blend.engine import ChunkCacheEngine
from chunkcache.blend.request import BlendRequest
from chunkcache.retrieval.chunk_index import ChunkIndex, Hit
from chunkcache.retrieval.chunk_table import ChunkRecord
from chunkcache.retrieval.fused_entries import fuse_request, precompute_fused_entries
from chunkcache.runner.decode import SamplingConfig


class RequestError(ValueError):
    """A request the server cannot serve as asked: HTTP `status`, naming `field`."""

    def __init__(self, field: str, message: str, status: int = 422) -> None:
        super().__init__(f"{field}: {message}")
        self.field, self.message, self.status = field, message, status


@dataclass(frozen=True)
class Prepared:
    """A validated generation: tokens resolved, limits checked."""

    engine: ChunkCacheEngine
    request: BlendRequest
    blend: BlendConfig
    sampling: SamplingConfig


class ChunkCacheService:
    def __init__(self, cfg: ServerConfig, engine: ChunkCacheEngine | None = None,
                 index: ChunkIndex | None = None) -> None:
        self.cfg = cfg
        self.engine = engine if engine is not None else ChunkCacheEngine.from_config(cfg.engine)
        self.store = self.engine.source.store
        self.index = index or ChunkIndex(cfg.engine.store_root if cfg.persistent else None, table_url=cfg.table_url)
        self._engines: OrderedDict[str, ChunkCacheEngine] = OrderedDict({cfg.system: self.engine})
        self._lock = threading.Lock()
        self._runtime: AgentRuntime | None = None

    @property
    def runtime(self) -> AgentRuntime:
        """The agents runtime of chat turns (the OpenAI routes): the engine's model, store and key space, its own
        anchor pool and prefix cache; built on first use."""
        with self._lock:
            if self._runtime is None:
                self._runtime = AgentRuntime.from_engine(self.engine)
            return self._runtime

    # ---- generation --------------------------------------------------------------------------
    def engine_for(self, system: str | None) -> ChunkCacheEngine:
        """The engine view for a system text (LRU of cfg.max_systems besides the default)."""
        system = system if system is not None else self.cfg.system
        with self._lock:
            if system in self._engines:
                self._engines.move_to_end(system)
                return self._engines[system]
            view = ChunkCacheEngine(self.engine.runner, self.store, system, self.engine.profile_root)
            self._engines[system] = view
            while len(self._engines) > self.cfg.max_systems + 1:
                oldest = next(k for k in self._engines if k != self.cfg.system)
                del self._engines[oldest]
            return view

    def resolve(self, chunks: list[str | ChunkRef]) -> list[str]:
        """Chunk texts; a stored id unknown here raises RequestError 404."""
        texts = []
        for i, c in enumerate(chunks):
            if isinstance(c, str):
                texts.append(c)
            elif c.text is not None:
                texts.append(c.text)
            else:
                rec = self.index.get(c.id)  # type: ignore[arg-type]
                if rec is None:
                    raise RequestError(f"chunks[{i}].id", f"no stored chunk {c.id!r}", 404)
                texts.append(rec.text)
        return texts

    def prepare(self, texts: list[str], query: str, opts: GenerationOptions) -> Prepared:
        if len(texts) > self.cfg.max_chunks:
            raise RequestError("chunks", f"{len(texts)} chunks; this server takes at most {self.cfg.max_chunks}")
        if opts.max_tokens > self.cfg.max_new_tokens:
            raise RequestError("max_tokens", f"{opts.max_tokens} exceeds this server's limit of "
                                             f"{self.cfg.max_new_tokens}")
        engine = self.engine_for(opts.system)
        try:
            req = engine.prompts.request(texts, query)
        except ValueError as err:
            raise RequestError("chunks" if "chunk" in str(err) else "query", str(err)) from None
        limit = min(self.cfg.max_prompt_tokens, engine.runner.max_positions)
        if req.num_tokens > limit:
            raise RequestError("chunks", f"prompt of {req.num_tokens} tokens (system + chunks + query) exceeds "
                                         f"the limit of {limit}", 413)
        if req.num_tokens + opts.max_tokens > engine.runner.max_positions:
            raise RequestError("max_tokens", f"prompt of {req.num_tokens} tokens + {opts.max_tokens} new tokens "
                                             f"exceeds the model context of {engine.runner.max_positions}")
        if opts.mode in FUSED_MODES:  # corpus neighbours for indexed chunks; asked for by name, the request's own too
            req = fuse_request(engine, req, texts, self.index.embedder, self.index,
                               local="mode" in opts.model_fields_set)
        blend = BlendConfig(mode=opts.mode, recompute_ratio=opts.recompute_ratio, calibrated=opts.calibrated,
                            decode_correction=opts.decode_correction,
                            decode_correction_steps=opts.decode_correction_steps)
        try:  # resolved here, so a model never calibrated is a 400 before the request queues
            blend = engine.blender.with_calibrated_ratio(req, blend)
        except ValueError as err:
            raise RequestError("calibrated", str(err)) from None
        return Prepared(engine, req, blend,
                        SamplingConfig(opts.max_tokens, opts.temperature, opts.top_p, opts.seed))

    def tier_hits(self) -> Counter[str]:
        """The store's hits per tier so far."""
        stats = getattr(self.store, "stats", None)
        if stats is None:
            return Counter()
        return Counter({t: v["hits"] for t, v in stats()["tiers"].items()})

    def stream(self, p: Prepared, cancelled: Callable[[], bool] = lambda: False) -> Iterator[dict]:
        """Yield {"token", "text"} per generated token, then {"done": stats, "token_ids"} (model worker only).

        The "text" pieces concatenate to tokenizer.decode(token_ids, skip_special_tokens=True) less an incomplete
        last character (a cut at max_tokens inside one; token_ids keep it). EOS is not
        yielded; text held back until EOS (an unfinished character) comes as {"token": None, "text"}.
        """
        before = self.tier_hits()
        stats: dict = {}
        ttft = 0.0
        ids: list[int] = []
        for tok, piece, ttft, stats in p.engine.stream(p.request, p.blend, p.sampling):
            if tok in p.engine.eos_ids:
                if piece:
                    yield {"token": None, "text": piece}
                break
            ids.append(tok)
            yield {"token": tok, "text": piece}
            if cancelled():
                break
        hits = self.tier_hits() - before
        yield {"done": {**stats, "ttft_s": ttft, "generated_tokens": len(ids), "tiers_hit": dict(hits)},
               "token_ids": ids}

    def generate(self, p: Prepared) -> tuple[str, dict, list[int]]:
        """(text, stats, generated token ids without EOS); text == decode(ids, skip_special_tokens=True) less an
        incomplete last character."""
        pieces, stats, ids = [], {}, []
        for item in self.stream(p):
            if "done" in item:
                stats, ids = item["done"], item["token_ids"]
            else:
                pieces.append(item["text"])
        return "".join(pieces), stats, ids

    # ---- chunks ------------------------------------------------------------------------------
    def put_chunks(self, texts: list[str], doc_id: str | None, index: bool, fused: bool = True) -> list[ChunkRecord]:
        """Precompute KV behind the default system prefix and record the texts (model worker only); indexed texts
        with `fused` also get their fused entries (mode fusion) behind their corpus neighbours."""
        keys = self.engine.precompute(texts)
        self.engine.source.flush()  # the KV is in every tier (Redis: other replicas) before the texts are recorded
        ntok = [len(self.engine.prompts.chunk_ids(t)) for t in texts]
        if not index:
            return [self.index.record(k, t, n, doc_id) for k, t, n in zip(keys, texts, ntok, strict=True)]
        vectors = self.index.embedder.encode(texts)  # [n_chunks, 384]
        records = self.index.add(keys, texts, ntok, doc_id, vectors)
        if fused:
            precompute_fused_entries(self.engine, self.index, texts, vectors)
            self.engine.source.flush()
        return records

    def chunk_tiers(self, key: str) -> list[str]:
        tier_of = getattr(self.store, "tier_of", None)
        return tier_of(key) if tier_of else []

    def delete_chunk(self, key: str) -> bool:
        rec = self.index.delete(key)
        held = bool(self.chunk_tiers(key))
        delete = getattr(self.store, "delete", None)
        if delete is not None:
            delete(key)
        return rec is not None or held

    def retrieve(self, query: str, k: int) -> list[Hit]:
        return self.index.search(query, k)

    def close(self) -> None:
        self.index.close()
        close = getattr(self.store, "close", None)
        if close is not None:
            close()
