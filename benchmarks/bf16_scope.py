"""Which decoder linear layers cost precision in bf16: the MLP's, the attention projections', or both.

`linear_dtype="bfloat16"` computes all seven GEMMs of each decoder layer in bf16. Here the same full prefill
runs with bf16 in each scope (all, mlp: gate/up/down, attn: q/k/v/o) against the fp32 model on the same token
ids, as the engine lays out each example's prompt, and reports per scope:
- kl: KL(fp32 || scope) of the next-token distributions, mean over every prompt position;
- kl_last: the same at the last position (the first answer token's distribution);
- top1: the fraction of positions whose argmax agrees with fp32;
- ttft_vs_fp32: fp32 time / the scope's time of the whole forward, median of paired ratios (--timed examples).

python benchmarks/bf16_scope.py --suite hotpotqa --split dev --limit 30 --json benchmarks/bf16_scope_hotpotqa_dev30.json
"""

import argparse
import copy
import json
import statistics
import time

import torch
import torch.nn.functional as F

from chunkcache.bench.tasks.runner import task_request
from chunkcache.bench.tasks.suites import get_suite, load_suite
from chunkcache.blend.prompt import PromptBuilder, PromptTemplate
from chunkcache.kernels._cpp import cpu_flags, cpuinfo
from chunkcache.runner.linear import Bf16Linear, decoder_linears
from chunkcache.runner.loader import load_model
from chunkcache.runner.runner import ModelRunner

SCOPES = {"all": ("mlp", "self_attn"), "mlp": ("mlp",), "attn": ("self_attn",)}


def swapped(model: torch.nn.Module, parents: tuple[str, ...]) -> torch.nn.Module:
    """A copy of model with the decoder linears of the named submodules (of each layer) in bf16."""
    model = copy.deepcopy(model)
    scope = {id(getattr(layer, name)) for layer in model.model.layers for name in parents}
    for parent, name, module in decoder_linears(model):
        if id(parent) in scope:
            setattr(parent, name, Bf16Linear(module))
    return model


def forward(runner: ModelRunner, ids: torch.Tensor) -> tuple[torch.Tensor, float]:
    t0 = time.perf_counter()
    logits = runner.logits(runner.extend(ids, runner.new_cache(ids.numel())))  # [n, vocab]
    return logits.log_softmax(-1), time.perf_counter() - t0


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--suite", default="hotpotqa")
    ap.add_argument("--split", default="dev")
    ap.add_argument("--limit", type=int, default=30)
    ap.add_argument("--timed", type=int, default=10)
    ap.add_argument("--json")
    args = ap.parse_args()
    torch.set_num_threads(2)
    loaded = load_model()
    prompts = PromptBuilder(loaded.tokenizer, PromptTemplate.from_tokenizer(loaded.tokenizer))
    runners = {"fp32": ModelRunner(loaded.model, kernels="torch")}
    runners.update({s: ModelRunner(swapped(loaded.model, p), kernels="torch") for s, p in SCOPES.items()})
    assert not decoder_linears(runners["all"].model) and len(decoder_linears(runners["mlp"].model))
    rows = []
    for i, ex in enumerate(load_suite(get_suite(args.suite), args.split, args.limit)):
        req = task_request(prompts, ex)
        ids = torch.tensor(req.prefix_ids + sum(req.chunks, ()) + req.suffix_ids)  # [n] the prompt in order
        ref, _ = forward(runners["fp32"], ids)
        row = {"id": ex.id, "tokens": ids.numel(), "timed": i < args.timed}
        for scope in SCOPES:
            lp, _ = forward(runners[scope], ids)
            kl = F.kl_div(lp, ref, log_target=True, reduction="none").sum(-1)  # [n] KL(fp32 || scope)
            row[scope] = {"kl": kl.mean().item(), "kl_last": kl[-1].item(),
                          "top1": (lp.argmax(-1) == ref.argmax(-1)).float().mean().item()}
            if row["timed"]:
                _, t_ref = forward(runners["fp32"], ids)  # paired: fp32 right before the scope
                _, t = forward(runners[scope], ids)
                row[scope]["ttft_vs_fp32"] = t_ref / t
        rows.append(row)
        print(f"[{i + 1}] {ex.id} {ids.numel()} tok " + "  ".join(
            f"{s}: kl={row[s]['kl']:.5f} last={row[s]['kl_last']:.5f} top1={row[s]['top1']:.4f}" for s in SCOPES),
            flush=True)
    summary = {s: {"kl_mean": statistics.mean(r[s]["kl"] for r in rows),
                   "kl_last_mean": statistics.mean(r[s]["kl_last"] for r in rows),
                   "top1_mean": statistics.mean(r[s]["top1"] for r in rows),
                   "ttft_vs_fp32_median": statistics.median(r[s]["ttft_vs_fp32"] for r in rows if r["timed"])}
               for s in SCOPES}
    print(json.dumps(summary, indent=1))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"machine": cpuinfo("model name"), "avx512_bf16": "avx512_bf16" in cpu_flags().split(),
                       "torch": torch.__version__, "date": time.strftime("%F"), "suite": args.suite,
                       "split": args.split, "summary": summary, "rows": rows}, f, indent=1)


if __name__ == "__main__":
    main()
