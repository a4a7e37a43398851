"""Serving commands: `serve` (the REST API of chunkcache/api/), `ingest PATH...`, `ask "question"`, `stats`."""

from __future__ import annotations

import json
import time
from pathlib import Path

from chunkcache.blend.config import DEFAULT_MODE, MODES
from chunkcache.config.arg_types import byte_size, positive, ratio

TEXT_SUFFIXES = (".txt", ".md")
SERVER_FLAGS = ("host", "port", "max_queue", "max_new_tokens", "max_prompt_tokens", "max_body_bytes", "max_batch",
                "max_batch_tokens", "kv_budget_bytes")
API_KEY_ENV, API_KEY_FILE_ENV = "CHUNKCACHE_API_KEY", "CHUNKCACHE_API_KEY_FILE"


def _service(args):  # type: ignore[no-untyped-def]
    from chunkcache.api.config import ServerConfig
    from chunkcache.api.service import ChunkCacheService

    return ChunkCacheService(ServerConfig(engine=args.engine))


def _read_key_file(path: str, name: str) -> str:
    from chunkcache.config import ConfigError

    try:
        key = Path(path).expanduser().read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError) as err:
        raise ConfigError(f"{name}: cannot read the API key file {path} ({err})") from None
    if not key:
        raise ConfigError(f"{name}: the API key file {path} is empty")
    return key


def api_key(args, table: dict) -> str | None:  # type: ignore[no-untyped-def]
    """The bearer key: flags (--api-key, --api-key-file) > env ($CHUNKCACHE_API_KEY, $CHUNKCACHE_API_KEY_FILE)
    > the [server] table (api_key, api_key_file); pops both keys from `table`. A file holds the key alone
    (surrounding whitespace dropped); giving a key and a file in one layer is an error."""
    import os

    from chunkcache.config import ConfigError

    layers = (("--api-key", getattr(args, "api_key", None), "--api-key-file", getattr(args, "api_key_file", None)),
              (API_KEY_ENV, os.environ.get(API_KEY_ENV) or None,
               API_KEY_FILE_ENV, os.environ.get(API_KEY_FILE_ENV) or None),
              ("server.api_key", table.pop("api_key", None), "server.api_key_file", table.pop("api_key_file", None)))
    for key_name, key, file_name, path in layers:
        if key is not None and path is not None:
            raise ConfigError(f"{file_name}: give the API key or a file holding it, not both ({key_name} is set too)")
        if path is not None:
            return _read_key_file(path, file_name)
        if key is not None:
            return key
    return None


def server_config(args):  # type: ignore[no-untyped-def]
    """The server's settings: flags > env > the --config file's [server] table > defaults (see api_key)."""
    from chunkcache.api.config import ServerConfig
    from chunkcache.config import server_table

    table = server_table(getattr(args, "config", None))
    flags = {k: getattr(args, k) for k in SERVER_FLAGS if getattr(args, k, None) is not None}
    flags["api_key"] = api_key(args, table)  # resolved here: from_layers then reads no env for it
    return ServerConfig.from_layers(args.engine, table, flags)


def check_listen(host: str, port: int) -> None:
    """ValueError, before any model loads, for an address the server could not listen on (unknown host, port in
    use): uvicorn binds only after the model has loaded (and, with --calibrate, after calibrating). Each address
    the host resolves to is bound as asyncio's create_server binds them (SO_REUSEADDR; a family this machine cannot
    open is skipped), then released."""
    import socket

    try:
        for family, kind, proto, _, addr in socket.getaddrinfo(host, port, type=socket.SOCK_STREAM,
                                                               flags=socket.AI_PASSIVE):
            try:
                sock = socket.socket(family, kind, proto)
            except OSError:
                continue
            with sock:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                sock.bind(addr)
    except OSError as err:  # socket.gaierror included
        raise ValueError(f"server.host, server.port: cannot listen on {host}:{port} ({err.strerror or err})") from None


def cmd_serve(args) -> int:  # type: ignore[no-untyped-def]
    import uvicorn

    from chunkcache.api.app import create_app

    cfg = server_config(args)
    check_listen(cfg.host, cfg.port)
    service = None
    if args.calibrate:  # before the port opens: the model is measured once, then served
        from chunkcache.api.service import ChunkCacheService
        from chunkcache.bench.calibrate import CalibrationConfig, load_sample
        from chunkcache.cli.calibrate import run_calibration

        calibration = CalibrationConfig(target_agreement=args.target_agreement,
                                        decode_correction=args.calibrate_decode_correction,
                                        decode_correction_steps=args.calibrate_decode_correction_steps)
        sample = load_sample(args.calibrate_data, args.calibrate_limit)
        service = ChunkCacheService(cfg)
        run_calibration(service.engine, calibration, sample)
    uvicorn.run(create_app(cfg, service), host=cfg.host, port=cfg.port, log_level=args.log_level,
                timeout_graceful_shutdown=10)
    return 0


def text_files(paths: list[str]) -> list[Path]:
    """The .txt/.md files named, or found under the folders named (sorted)."""
    out: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            out += sorted(f for f in p.rglob("*") if f.is_file() and f.suffix.lower() in TEXT_SUFFIXES)
        elif p.is_file():
            out.append(p)
        else:
            raise FileNotFoundError(f"{p}: no such file or folder")
    if not out:
        raise ValueError(f"no {'/'.join(TEXT_SUFFIXES)} files under {', '.join(paths)}")
    return out


def cmd_ingest(args) -> int:  # type: ignore[no-untyped-def]
    from tqdm import tqdm

    from chunkcache.retrieval.chunking import ChunkingConfig
    from chunkcache.retrieval.ingest import Document, Ingestor

    chunking = ChunkingConfig(args.chunk_tokens, args.overlap_tokens)  # checked before any model loads
    files = text_files(args.paths)
    texts = {}
    for f in files:
        try:
            texts[str(f.resolve())] = f.read_text(encoding="utf-8")
        except UnicodeDecodeError as err:
            raise ValueError(f"{f}: not UTF-8 text ({err.reason} at byte {err.start})") from None
    docs = [Document(text, path) for path, text in texts.items() if text.strip()]
    svc = _service(args)
    bars: dict[str, tqdm] = {}

    def progress(stage: str, done: int, total: int) -> None:
        bar = bars.get(stage) or bars.setdefault(stage, tqdm(total=total, desc=f"{stage:<10}", unit="it"))
        bar.total = total
        bar.update(done - bar.n)

    try:
        res = Ingestor(svc.engine, svc.index, chunking, fused=args.fused).ingest(docs, progress)
    finally:
        for bar in bars.values():
            bar.close()
        svc.close()
    print(f"ingested {res.documents} documents: {len(res.chunk_keys)} chunks ({res.new_chunks} new), "
          f"{res.tokens} tokens (+{res.fusion_extra_tokens} for fused entries) in {res.seconds:.1f}s")
    return 0


def cmd_ask(args) -> int:  # type: ignore[no-untyped-def]
    from chunkcache.api.schemas import GenerationOptions

    opts = GenerationOptions(mode=args.mode, recompute_ratio=args.recompute_ratio, calibrated=args.calibrated,
                             decode_correction=args.decode_correction,
                             decode_correction_steps=args.decode_correction_steps, max_tokens=args.max_tokens)
    svc = _service(args)  # after the options' checks: a bad flag exits 2 before any model loads
    try:
        hits = svc.retrieve(args.question, args.k)
        if not hits:
            raise ValueError("the index is empty: run `chunkcache ingest PATH...` first")
        t0 = time.perf_counter()
        text, s, _ = svc.generate(svc.prepare([h.text for h in hits], args.question, opts))
        total = time.perf_counter() - t0
    finally:
        svc.close()
    for h in hits:
        print(f"[{h.score:.3f}] {h.key[:12]} {h.doc_id or ''}: {h.text[:80]!r}")
    print(f"\n{text}\n")
    queued = f"; {s['decode_pending']} prompt tokens recomputed during decode" if s["decode_pending"] else ""
    print(f"mode {s['mode']}: TTFT {s['ttft_s']:.2f}s, total {total:.2f}s; reused {s['reused_tokens']}/"
          f"{s['prompt_tokens']} prompt tokens, recomputed {s['recomputed_tokens']}; chunk hits {s['chunk_hits']}, "
          f"misses {s['chunk_misses']}; tiers hit {s['tiers_hit']}{queued}")
    return 0


def cmd_stats(args) -> int:  # type: ignore[no-untyped-def]
    from sqlalchemy import func, select
    from sqlalchemy.orm import Session

    from chunkcache.retrieval.chunk_index import ChunkIndex
    from chunkcache.store.catalog import ChunkRow
    from chunkcache.store.chunk_store import ChunkStore

    root = args.engine.store_root
    out: dict = {"store_dir": str(root)}
    with ChunkStore(args.engine.store_config()) as store:
        s = store.stats()
        out["tiers"] = {t: {"entries": v["entries"], "bytes": v["bytes"]} for t, v in s["tiers"].items()}
        rows = []
        if store.catalog is not None:
            with Session(store.catalog.engine) as db:
                rows = db.execute(select(ChunkRow.fingerprint, func.count(), func.sum(ChunkRow.nbytes),
                                         func.sum(ChunkRow.num_tokens), func.sum(ChunkRow.hits))
                                  .group_by(ChunkRow.fingerprint)).all()
        out["catalog"] = [{"fingerprint": r[0], "chunks": r[1], "bytes": int(r[2] or 0), "tokens": int(r[3] or 0),
                           "hits": int(r[4] or 0)} for r in rows]
    index = ChunkIndex(root if args.engine.store.disk else None, table_url=args.engine.store.catalog_url)
    out["index"] = index.stats()
    index.close()
    if args.json:
        print(json.dumps(out, indent=2))
        return 0
    print(f"store {root}")
    for t, v in out["tiers"].items():
        print(f"  {t:<6} {v['entries']:>7} chunks {v['bytes'] / 2**20:10.1f} MiB")
    for c in out["catalog"]:
        print(f"  catalog: {c['chunks']} chunks, {c['tokens']} tokens, {c['bytes'] / 2**20:.1f} MiB, {c['hits']} hits "
              f"(model {c['fingerprint'][:16]})")
    i = out["index"]
    print(f"  index: {i['chunks']} chunk texts from {i['documents']} documents, {i['vectors']} vectors")
    return 0


def register(sub, flags) -> None:  # type: ignore[no-untyped-def]
    """Add serve / ingest / ask / stats to the `chunkcache` sub-commands.
    flags: the engine flags' parent parser (chunkcache.config.flags.engine_flags)."""
    parents = [flags]
    serve = sub.add_parser("serve", help="REST API (FastAPI + uvicorn); server settings: flags > env > the "
                                         "--config file's [server] table > defaults", parents=parents)
    serve.add_argument("--host", default=None, help="default 127.0.0.1")
    serve.add_argument("--port", type=int, default=None, help="default 8000")
    serve.add_argument("--max-queue", type=positive, default=None, help="waiting requests before 429 (default 16)")
    serve.add_argument("--max-batch", type=positive, default=None,
                       help="requests prefilling or decoding at once (continuous batching; 1: one at a time; "
                            "default 16)")
    serve.add_argument("--max-batch-tokens", type=positive, default=None,
                       help="prefill tokens per scheduler step; full/prefix prefills are sliced to it (default 512)")
    serve.add_argument("--kv-budget", dest="kv_budget_bytes", type=byte_size, default=None,
                       help="KV of the requests in flight, e.g. 2GiB; admission waits beyond it (default 2GiB)")
    serve.add_argument("--max-new-tokens", type=positive, default=None, help="default 512")
    serve.add_argument("--max-prompt-tokens", type=positive, default=None, help="default 8192")
    serve.add_argument("--max-body-bytes", type=positive, default=None, help="default 4 MiB")
    serve.add_argument("--api-key-file", default=None, metavar="PATH",
                       help="file holding the bearer token (default $CHUNKCACHE_API_KEY_FILE or $CHUNKCACHE_API_KEY; "
                            "none: open)")
    serve.add_argument("--api-key", default=None, help="bearer token, for tests only: a command line is readable "
                                                       "by every local user (/proc/PID/cmdline); use --api-key-file")
    serve.add_argument("--log-level", default="warning")
    serve.add_argument("--calibrate", action="store_true",
                       help="first run `chunkcache calibrate` on this model (requests then may ask for "
                            '"calibrated": true)')
    serve.add_argument("--calibrate-data", default=None, metavar="FILE",
                       help='--calibrate\'s sample: [{"chunks": [...], "question": ...}] (default: bundled MuSiQue)')
    serve.add_argument("--calibrate-limit", type=positive, default=4, help="--calibrate's examples")
    serve.add_argument("--target-agreement", type=ratio, default=0.95,
                       help="--calibrate's target: mean answer token F1 against full prefill")
    serve.add_argument("--calibrate-decode-correction", type=int, default=0, metavar="K",
                       help="--calibrate decodes with this correction: the ratio requests with that K get")
    serve.add_argument("--calibrate-decode-correction-steps", type=int, default=0, metavar="S",
                       help="--calibrate decodes with the correction finishing within S steps")
    serve.set_defaults(func=cmd_serve)

    ingest = sub.add_parser("ingest", help="chunk, embed, index and precompute .txt/.md files or folders",
                            parents=parents)
    ingest.add_argument("paths", nargs="+")
    ingest.add_argument("--chunk-tokens", type=positive, default=256)
    ingest.add_argument("--overlap-tokens", type=int, default=32)
    ingest.add_argument("--no-fused", dest="fused", action="store_false",
                        help="skip each chunk's fused entry (read by the fused modes, the default among them: "
                             "about 3x the plain precompute; without it the first request holding the chunk "
                             "computes it)")
    ingest.set_defaults(func=cmd_ingest)

    ask = sub.add_parser("ask", help="retrieve from the index and answer with blending", parents=parents)
    ask.add_argument("question")
    ask.add_argument("-k", type=positive, default=4)
    ask.add_argument("--mode", default=DEFAULT_MODE, choices=MODES)
    ask.add_argument("--recompute-ratio", type=ratio, default=0.15)
    ask.add_argument("--decode-correction", type=int, default=0, metavar="K",
                     help="recompute K prompt tokens per decode step until the cache is full prefill's (0: none)")
    ask.add_argument("--decode-correction-steps", type=int, default=0, metavar="S",
                     help="the same correction, finishing within S decode steps (instead of --decode-correction)")
    ask.add_argument("--calibrated", action="store_true",
                     help="the ratio `chunkcache calibrate` stored for this model instead of --recompute-ratio")
    ask.add_argument("--max-tokens", type=positive, default=32)
    ask.set_defaults(func=cmd_ask)

    stats = sub.add_parser("stats", help="store, catalog and index summary", parents=parents)
    stats.add_argument("--json", action="store_true")
    stats.set_defaults(func=cmd_stats)
