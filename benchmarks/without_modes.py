"""A `bench tasks` JSON without some modes, so that a rerun of those modes (after their rule changed) can be
joined with the rest by `chunkcache bench tasks --merge` or `dominance_at_scale.py`, which refuse a label two
runs answered differently. Drops each mode's label and its swept labels (`mode@ratio`) from every example, the
per-mode summaries, the Pareto rows and config.modes, and the dominance section (it compares the default with the
rest, so it goes when any mode goes; --merge recomputes it); everything else is kept as measured.

python benchmarks/without_modes.py IN.json OUT.json fusionqc[,mode...]
"""
import json
import sys
from pathlib import Path


def dropped(label: str, modes: set[str]) -> bool:
    return label.split("@")[0] in modes


def without(result: dict, modes: set[str]) -> dict:
    out = dict(result)
    out["examples"] = [{**ex, "modes": {k: v for k, v in ex["modes"].items() if not dropped(k, modes)}}
                       for ex in result["examples"]]
    if "modes" in result:
        out["modes"] = {k: v for k, v in result["modes"].items() if not dropped(k, modes)}
    if result.get("pareto"):
        out["pareto"] = [p for p in result["pareto"] if p["mode"] not in modes]
    out.pop("dominance", None)
    if "config" in result:
        out["config"] = {**result["config"], "modes": [m for m in result["config"]["modes"] if m not in modes]}
    return out


def main() -> None:
    src, dst, modes = sys.argv[1], sys.argv[2], set(sys.argv[3].split(","))
    Path(dst).write_text(json.dumps(without(json.loads(Path(src).read_text()), modes), indent=1))


if __name__ == "__main__":
    main()
