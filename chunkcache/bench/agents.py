"""`chunkcache bench agents`: multi-agent discussion on MuSiQue, every mode against dense prefill.

Per example, the agents discuss the question over its first passages for `rounds` fully connected
rounds. The conversation is generated once with dense prefill; every other mode then replays the
same turns with the same earlier messages (so only the cache differs): it prefills each prompt
(timed: TTFT = prefill to first-token logits), is teacher-forced on the dense turn's output
(top-1 agreement, KL), and decodes freely (answer F1 against dense, first token). Modes with
anchors keep one pool across examples; the first `warmup` examples only fill it (not counted).
Speedups are medians of per-turn paired ratios dense TTFT / mode TTFT measured in the same run.
"""

from __future__ import annotations

import json
import os
import statistics
from dataclasses import dataclass

import torch

from chunkcache.agents.config import AnchorConfig
from chunkcache.agents.runtime import AgentRuntime
from chunkcache.agents.template import AgentTemplate, Message
from chunkcache.agents.workflows import Agent, chat_round_turn, round_turn
from chunkcache.bench.metrics import teacher_forced, token_f1
from chunkcache.bench.musique import passage_text
from chunkcache.bench.rag import write_json
from chunkcache.bench.teacher_forcing import greedy, tf_logits
from chunkcache.blend.config import AGENT_MODES, BlendConfig, check_mode_name
from chunkcache.config.arg_types import at_least, non_negative, positive
from chunkcache.runner.runner import ModelRunner

ROLES = ("a careful fact checker", "a historian", "a geographer", "a skeptical reviewer", "a concise summarizer",
         "a librarian", "a detective", "a journalist")


def make_agents(n: int) -> list[Agent]:
    return [Agent(f"agent{i + 1}", f"You are {ROLES[i % len(ROLES)]} in a team answering questions together. "
                  "Answer with a short phrase.") for i in range(n)]


@dataclass
class RefTurn:
    template: AgentTemplate
    values: dict
    answer: list[int]  # dense greedy output, EOS dropped
    ref_logits: torch.Tensor  # [len(answer), vocab] teacher-forced dense logits
    ttft_s: float
    prompt_tokens: int
    text: str
    round: int


def _greedy(rt: AgentRuntime, pre, n: int, max_new: int) -> list[int]:
    pre.cache.truncate(n)
    return [t for t in greedy(rt.runner, pre.cache, pre.logits, max_new, rt.eos_ids) if t not in rt.eos_ids]


def dense_conversation(rt: AgentRuntime, agents: list[Agent], ex: dict, rounds: int, passages: int,
                       max_new: int, layout: str = "plain") -> list[RefTurn]:
    """layout: plain (`round_turn`, one user turn per prompt) or chat (`chat_round_turn`, the chat model's
    layout: the model's chat template, one turn per message)."""
    context = "".join(passage_text(c) for c in ex["ctxs"][:passages]) if passages else None
    cfg = BlendConfig(mode="full")
    out, previous = [], None
    for r in range(rounds):
        msgs = {}
        for a in agents:
            tpl, values = (round_turn(a, agents, ex["question"], context, previous) if layout == "plain" else
                           chat_round_turn(rt.tokenizer, a, agents, ex["question"], context, previous))
            pre, n = rt.prefill(tpl, values, cfg, reserve=max_new + 1)
            answer = _greedy(rt, pre, n, max_new) or [next(iter(rt.eos_ids))]
            pre.cache.truncate(n)
            ref = tf_logits(rt.runner, pre.cache, pre.logits, answer)
            text = rt.tokenizer.decode(answer, skip_special_tokens=True)
            msgs[a.name] = Message(text, tuple(answer), a.name)
            out.append(RefTurn(tpl, values, answer, ref, pre.stats.ttft_s, n, text, r))
        previous = msgs
    return out


def replay(rt: AgentRuntime, turns: list[RefTurn], cfg: BlendConfig, max_new: int, free_run: bool) -> list[dict]:
    rows = []
    for t in turns:
        pre, n = rt.prefill(t.template, t.values, cfg, reserve=max_new + len(t.answer) + 1)
        top1, kl = teacher_forced(t.ref_logits,
                                  tf_logits(rt.runner, pre.cache, pre.logits, t.answer, keep=cfg.places_kv))
        if cfg.places_kv:
            rt.keep_response(pre, n, t.answer)
        s = pre.stats
        row = {"round": t.round, "ttft_s": s.ttft_s, "speedup": t.ttft_s / s.ttft_s, "prompt_tokens": n,
               "reused_tokens": s.reused_tokens,
               "tf_top1": top1, "tf_kl": kl, "anchors_hit": s.anchors_hit, "anchors_added": s.anchors_added,
               "dense_fallback": s.dense_fallback, "recomputed_tokens": s.recomputed_tokens,
               "fallbacks": s.fallbacks, "timings": dict(s.timings),
               "slots": [f"{x['placeholder']}:{x.get('decision', '-')}:{x.get('reason', x['base'])}" for x in s.slots]}
        if free_run:
            ids = _greedy(rt, pre, n, max_new)
            text = rt.tokenizer.decode(ids, skip_special_tokens=True)
            row.update(fidelity_f1=token_f1(text, t.text) if t.text.strip() else float(not text.strip()),
                       first_token=float(ids[:1] == t.answer[:1]))
        rows.append(row)
    return rows


def reuse_rate(rows: list[dict]) -> float:
    """Share of prompt tokens whose KV came from cache (token-weighted over the turns)."""
    return sum(r["reused_tokens"] for r in rows) / sum(r["prompt_tokens"] for r in rows)


def by_round(rows: list[dict]) -> list[dict]:
    """The per-round split: reuse, speedup and fidelity of each round's turns."""
    rounds = sorted({r["round"] for r in rows})
    out = []
    for k in rounds:
        rs = [r for r in rows if r["round"] == k]
        out.append({"round": k, "turns": len(rs), "reuse_rate": reuse_rate(rs),
                    "ttft_speedup_vs_dense_median": statistics.median(r["speedup"] for r in rs),
                    "ttft_s_median": statistics.median(r["ttft_s"] for r in rs),
                    "tf_top1_agreement": statistics.fmean(r["tf_top1"] for r in rs),
                    "dense_fallback_rate": statistics.fmean(r["dense_fallback"] for r in rs),
                    "timings_s_median": step_medians(rs)})
    return out


def step_medians(rows: list[dict]) -> dict[str, float]:
    """Median seconds of each prefill step over the turns (place: bases + match + estimate; load: writing
    placed KV into the cache; compute: selection and the recompute layers), the placement profile."""
    steps = sorted({k for r in rows for k in r.get("timings", {})})
    return {k: statistics.median(r.get("timings", {}).get(k, 0.0) for r in rows) for k in steps}


def summarize(rows: list[dict]) -> dict:
    mean = lambda k, rs=rows: statistics.fmean(r[k] for r in rs) if rs else None  # noqa: E731
    reused = [r for r in rows if r["anchors_hit"]]
    rounds = by_round(rows)
    return {
        "turns": len(rows),
        "ttft_s_median": statistics.median(r["ttft_s"] for r in rows),
        "ttft_speedup_vs_dense_median": statistics.median(r["speedup"] for r in rows),
        "reuse_rate": reuse_rate(rows),
        "reuse_rate_by_round": [r["reuse_rate"] for r in rounds],
        "by_round": rounds,
        "tf_top1_agreement": mean("tf_top1"), "tf_kl_mean": mean("tf_kl"),
        "fidelity_f1_mean": mean("fidelity_f1"), "first_token_agreement": mean("first_token"),
        "dense_fallback_rate": mean("dense_fallback"),
        "anchors_hit": sum(r["anchors_hit"] for r in rows), "anchors_added": sum(r["anchors_added"] for r in rows),
        "recomputed_tokens_mean": mean("recomputed_tokens"),
        "anchored_turns": len(reused),
        "tf_top1_agreement_anchored_turns": mean("tf_top1", reused),
        "ttft_speedup_anchored_turns_median": statistics.median(r["speedup"] for r in reused) if reused else None,
    }


def run_agents(runner: ModelRunner, examples: list[dict], n_agents: int, rounds: int, modes: list[str],
               passages: int = 2, max_new: int = 24, warmup: int = 2, recompute_ratio: float = 0.15,
               anchor_config: AnchorConfig = AnchorConfig(), log=print, epic_k: int = BlendConfig.epic_k,
               sink_tokens: int = BlendConfig.sink_tokens, layout: str = "plain") -> dict:
    modes = mode_names(",".join(modes))
    agents = make_agents(n_agents)
    dense_rt = AgentRuntime(runner)
    others = [m for m in modes if m != "full"]
    rts = {m: AgentRuntime(runner, anchor_config=anchor_config) for m in others}
    cfgs = {m: BlendConfig.named(m, recompute_ratio=recompute_ratio, epic_k=epic_k, sink_tokens=sink_tokens)
            for m in others}
    per_mode: dict[str, list[dict]] = {m: [] for m in modes}
    for i, ex in enumerate(examples):
        warm = i < warmup
        turns = dense_conversation(dense_rt, agents, ex, rounds, passages, max_new, layout)
        if not warm:
            per_mode.setdefault("full", [])
            per_mode["full"] += [{"round": t.round, "ttft_s": t.ttft_s, "speedup": 1.0,
                                   "prompt_tokens": t.prompt_tokens, "reused_tokens": 0, "tf_top1": 1.0,
                                   "tf_kl": 0.0, "fidelity_f1": 1.0, "first_token": 1.0, "anchors_hit": 0,
                                   "anchors_added": 0, "dense_fallback": False, "recomputed_tokens": 0} for t in turns]
        line = []
        for m in others:
            if warm and not cfgs[m].kvcomm:
                continue
            rows = replay(rts[m], turns, cfgs[m], max_new, free_run=not warm)
            if not warm:
                per_mode[m] += rows
            line.append(f"{m}: ttft {statistics.median(r['ttft_s'] for r in rows):.3f}s "
                        f"top1 {statistics.fmean(r['tf_top1'] for r in rows):.3f} "
                        f"anchored {sum(bool(r['anchors_hit']) for r in rows)}/{len(rows)}")
        dense_ttft = statistics.median(t.ttft_s for t in turns)
        if not warm:
            for m in others:
                for rnd in by_round(per_mode[m][-len(turns):]):
                    t = rnd["timings_s_median"]
                    line.append(f"{m} round {rnd['round'] + 1}: {rnd['ttft_speedup_vs_dense_median']:.2f}x, "
                                + " ".join(f"{k} {1e3 * v:.0f}ms" for k, v in t.items()))
        log(f"[{i + 1}/{len(examples)}{' warmup' if warm else ''}] prompt ~{turns[-1].prompt_tokens} tok, "
            f"dense ttft {dense_ttft:.3f}s | " + " | ".join(line))
    modes_out = {m: summarize(rows) for m, rows in per_mode.items() if rows}
    return {"modes": modes_out, "per_turn": {m: rows for m, rows in per_mode.items()},
            "anchors": {m: len(rt.pool) for m, rt in rts.items()}}


def mode_names(spec: str) -> list[str]:
    """The modes of a comma-separated list, canonical names (dense -> full), full first."""
    out = []
    for m in (x.strip() for x in spec.split(",") if x.strip()):
        try:
            name = BlendConfig.named(check_mode_name(m)).name
        except ValueError as err:
            raise ValueError(f"--modes: {err}") from None
        if name not in out:
            out.append(name)
    return ["full"] + [m for m in out if m != "full"]


def register(bench_subparsers) -> None:
    """Add `bench agents` to the `chunkcache bench` sub-commands."""
    p = bench_subparsers.add_parser("agents", help="multi-agent KV reuse (KVCOMM anchors, CacheBlend) vs dense")
    from chunkcache.bench.musique import DEFAULT_DATA

    p.add_argument("--data", default=str(DEFAULT_DATA))
    p.add_argument("--agents", type=at_least(2), default=5)
    p.add_argument("--rounds", type=positive, default=2)
    p.add_argument("--limit", type=positive, default=2, help="measured examples (after the warm-up ones)")
    p.add_argument("--warmup", type=non_negative, default=5, help="examples that only fill the anchor pools")
    p.add_argument("--passages", type=non_negative, default=1, help="passages of each example every agent reads")
    p.add_argument("--modes", default=",".join(AGENT_MODES),
                   help="comma-separated BlendConfig.named names (dense = full, the reference, always run)")
    p.add_argument("--max-new-tokens", type=positive, default=12)
    p.add_argument("--recompute-ratio", type=float, default=0.15)
    p.add_argument("--epic-k", type=int, default=BlendConfig.epic_k, help="epic modes: first k tokens of every chunk")
    p.add_argument("--sink-tokens", type=int, default=BlendConfig.sink_tokens,
                   help="kvcomm+epic / kvcomm+blend: tokens recomputed at the start of each anchor-placed segment")
    p.add_argument("--entropy-threshold", type=float, default=AnchorConfig.entropy_threshold)
    p.add_argument("--temperature", type=float, default=AnchorConfig.temperature)
    p.add_argument("--turns", type=non_negative, default=0,
                   help="instead: a long discussion of this many turns, reporting memory (bench/agents_long.py)")
    p.add_argument("--long-mode", default="kvcomm+blend", help="--turns: the mode of every turn")
    p.add_argument("--cpu-budget-mib", type=positive, default=256, help="--turns: the store's CPU-tier budget")
    p.add_argument("--layout", choices=("plain", "chat"), default="plain",
                   help="plain: one user turn per prompt; chat: the chat model's layout (chat template, a turn "
                   "per message)")
    p.add_argument("--json", default=None)
    p.set_defaults(func=cmd_bench_agents)


def cmd_bench_agents(args) -> int:
    from chunkcache.bench.musique import load_examples
    from chunkcache.runner.loader import load_model

    modes = mode_names(args.modes)
    acfg = AnchorConfig(entropy_threshold=args.entropy_threshold, temperature=args.temperature)
    BlendConfig(recompute_ratio=args.recompute_ratio, epic_k=args.epic_k, sink_tokens=args.sink_tokens)
    cfg = args.engine
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    if args.turns:
        return _cmd_long(args, cfg)
    examples = load_examples(args.data, args.warmup + args.limit)
    lm = load_model(cfg.model_path, getattr(torch, cfg.resolved_dtype), cfg.device, cfg.cache_dir)
    runner = ModelRunner(lm.model, lm.tokenizer, kernels=cfg.kernels)
    result = run_agents(runner, examples, args.agents, args.rounds, modes, args.passages, args.max_new_tokens,
                        args.warmup, args.recompute_ratio, acfg, epic_k=args.epic_k, sink_tokens=args.sink_tokens,
                        layout=args.layout)
    result["config"] = {k: getattr(args, k) for k in ("data", "agents", "rounds", "limit", "warmup", "passages",
                                                      "max_new_tokens", "recompute_ratio", "epic_k", "sink_tokens",
                                                      "entropy_threshold", "temperature", "layout")}
    result["config"]["model"] = cfg.model_path or "SmolLM2-135M-Instruct (default)"
    result["config"]["kernels"] = cfg.kernels
    result["config"]["attention"] = runner.attention.summary()
    print(json.dumps(result["modes"], indent=2))
    _write(result, args.json)
    return 0


def _cmd_long(args, cfg) -> int:
    from chunkcache.bench.agents_long import run_long
    from chunkcache.bench.musique import load_examples
    from chunkcache.runner.loader import load_model

    check_mode_name(args.long_mode)
    lm = load_model(cfg.model_path, getattr(torch, cfg.resolved_dtype), cfg.device, cfg.cache_dir)
    runner = ModelRunner(lm.model, lm.tokenizer, kernels=cfg.kernels)
    result = run_long(runner, load_examples(args.data, 200), make_agents(args.agents),
                      args.turns, args.long_mode, args.cpu_budget_mib * 2**20)
    result["config"] = {"model": cfg.model_path or "SmolLM2-135M-Instruct (default)", "data": args.data,
                        "MALLOC_MMAP_THRESHOLD_": os.environ.get("MALLOC_MMAP_THRESHOLD_")}  # glibc: see BENCHMARKS
    print(json.dumps({k: v for k, v in result.items() if k != "checkpoints"}, indent=2))
    _write(result, args.json)
    return 0


def _write(result: dict, path: str | None) -> None:
    if path:
        write_json(result, path)
        print(f"wrote {path}")
