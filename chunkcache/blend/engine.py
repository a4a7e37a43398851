"""The object users hold: model runner + chunk source + blender + prompt builder."""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import torch

from chunkcache.blend.anchor_memo import AnchorMemo
from chunkcache.blend.blender import Blender, BlendResult, PrefillSteps
from chunkcache.blend.chunk_source import ChunkSource, KVStore
from chunkcache.blend.config import BlendConfig
from chunkcache.blend.prompt import DEFAULT_SYSTEM, PromptBuilder, PromptTemplate
from chunkcache.blend.qcfuse import critical_layers
from chunkcache.blend.request import BlendRequest
from chunkcache.config import EngineConfig, check_config
from chunkcache.runner.decode import SamplingConfig, decode_steps, eos_token_ids
from chunkcache.runner.detokenize import Detokenizer
from chunkcache.runner.loader import load_model
from chunkcache.runner.runner import ModelRunner
from chunkcache.store.chunk_kv import ChunkKV
from chunkcache.store.chunk_store import ChunkStore

__all__ = ["Answer", "ChunkCacheEngine", "EngineConfig"]


@dataclass
class Answer:
    text: str
    token_ids: list[int]
    ttft_s: float
    stats: dict = field(default_factory=dict)


class ChunkCacheEngine:
    """profile_root: where this model's measurements (calibrated ratios, critical layers) are read
    (EngineConfig.profile_root; None: the default cache dir's `profiles`)."""

    def __init__(self, runner: ModelRunner, store: KVStore, system: str = DEFAULT_SYSTEM,
                 profile_root: Path | None = None) -> None:
        self.runner = runner
        self.system = system
        self.profile_root = profile_root
        self.tokenizer = runner.tokenizer
        self.prompts = PromptBuilder(self.tokenizer, PromptTemplate.from_tokenizer(self.tokenizer, system))
        self.source = ChunkSource(runner, store, self.prompts.prefix_ids)
        self.anchor_memo = AnchorMemo(catalog=getattr(store, "catalog", None))  # persisted where a catalog is
        self.blender = Blender(runner, self.source, anchor_memo=self.anchor_memo, profile_root=profile_root)
        self.eos_ids = eos_token_ids(runner.model, self.tokenizer)

    @classmethod
    def from_config(cls, cfg: EngineConfig = EngineConfig(), store: KVStore | None = None) -> "ChunkCacheEngine":
        """Check cfg against this machine (device, kernels, URLs), then load the model on cfg.device in
        cfg.dtype and open the store it describes (store: an already-built one instead)."""
        check_config(cfg)
        if cfg.threads:
            torch.set_num_threads(cfg.threads)
        if store is None:
            store = ChunkStore(cfg.store_config())
        lm = load_model(cfg.model_path, getattr(torch, cfg.resolved_dtype), cfg.device, cfg.cache_dir)
        runner = ModelRunner(lm.model, lm.tokenizer, kernels=cfg.kernels, linear_dtype=cfg.linear_dtype,
                             decode_linear_dtype=cfg.decode_linear_dtype, attention_dtype=cfg.attention_dtype)
        return cls(runner, store, cfg.system if cfg.system is not None else DEFAULT_SYSTEM, cfg.profile_root)

    def precompute(self, chunks: list[str]) -> list[str]:
        """Compute (or find) each chunk's KV; returns their keys."""
        keys = []
        for text in chunks:
            ids = self.prompts.chunk_ids(text)
            kv, _ = self.source.get(ids)
            keys.append(kv.key)
        if self.prompts.prefix_ids:
            self.source.get(self.prompts.prefix_ids, ())
        return keys

    def warm_anchors(self, token_ids: tuple[int, ...], context_ids: tuple[int, ...] | None = None,
                     cfg: BlendConfig = BlendConfig(), kv: ChunkKV | None = None) -> bool:
        """Compute qcfuse's anchors of the entry of token_ids behind context_ids (default: the precompute
        context; kv: that entry, when the caller has just read or computed it) at cfg's anchor_ratio /
        anchor_sinks and critical layers (default: what the default mode reads), so the first request that
        places the entry does not (blend/anchor_memo.py). False when already held."""
        last = max(critical_layers(self.runner, cfg.critical_layers, self.profile_root))
        ctx = self.source.context_ids if context_ids is None else tuple(context_ids)
        return self.anchor_memo.warm(self.runner, self.source, tuple(token_ids), ctx, last, cfg.anchor_ratio,
                                     cfg.anchor_sinks, kv)

    def prefill(self, req: BlendRequest, cfg: BlendConfig, reserve: int = 0) -> BlendResult:
        return self.blender.prefill(req, cfg, reserve)

    def prefill_steps(self, req: BlendRequest, cfg: BlendConfig, reserve: int = 0, slice_tokens: int = 0
                      ) -> PrefillSteps:
        """`prefill` in pieces of work (`Blender.prefill_steps`: full/prefix in slices of slice_tokens)."""
        return self.blender.prefill_steps(req, cfg, reserve, slice_tokens)

    def stream(self, req: BlendRequest, cfg: BlendConfig, sampling: SamplingConfig = SamplingConfig()
               ) -> Iterator[tuple[int, str, float, dict]]:
        """Yield (token_id, text_piece, ttft_s, stats) per generated token. The pieces concatenate to
        `complete_text(tokenizer.decode(non-EOS ids, skip_special_tokens=True))`: a piece is "" while the text
        ends in an incomplete UTF-8 character, the final token's piece carries whatever was held back (an EOS
        token's piece is "" unless text was held back), and a character still incomplete at the end (max
        tokens reached inside it) is dropped. The prefill runs when the first item is requested."""
        t0 = time.perf_counter()
        res = self.prefill(req, cfg, reserve=sampling.max_new_tokens)
        ttft, stats = time.perf_counter() - t0, res.stats.as_dict()
        detok = Detokenizer(self.tokenizer)
        for tok, last in decode_steps(self.runner, res.cache, res.logits, sampling, self.eos_ids,
                                      res.correction):
            piece = detok.add(tok) if tok not in self.eos_ids else ""
            yield tok, piece + (detok.flush() if last else ""), ttft, stats

    def generate(self, req: BlendRequest, cfg: BlendConfig, sampling: SamplingConfig = SamplingConfig()) -> Answer:
        """Answer.text == tokenizer.decode(answer ids without EOS, skip_special_tokens=True), unstripped, less an
        incomplete last character (token_ids keep its bytes)."""
        ids, pieces, ttft, stats = [], [], 0.0, {}
        for tok, piece, ttft, stats in self.stream(req, cfg, sampling):
            ids.append(tok)
            pieces.append(piece)
        return Answer("".join(pieces), ids, ttft, stats)

    def answer(self, chunks: list[str], question: str, cfg: BlendConfig = BlendConfig(),
               sampling: SamplingConfig = SamplingConfig()) -> Answer:
        return self.generate(self.prompts.request(chunks, question), cfg, sampling)

    def close(self) -> None:
        """Close the store (ChunkStore: its queued background writes land first, then its tiers and catalog
        close), so that what this process computed is there for the next one; a store without close is left."""
        close = getattr(self.source.store, "close", None)
        if close is not None:
            close()

    def __enter__(self) -> "ChunkCacheEngine":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
