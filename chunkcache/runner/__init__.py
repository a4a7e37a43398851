"""Model loading and the layer-by-layer runner that partial prefill needs."""

from chunkcache.runner.kv_cache import KVCache
from chunkcache.runner.loader import LoadedModel, load_model
from chunkcache.runner.runner import ModelRunner

__all__ = ["KVCache", "LoadedModel", "ModelRunner", "load_model"]
