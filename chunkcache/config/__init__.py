"""One validated engine configuration for every entry point (see settings, loading, checks, flags)."""

from chunkcache.config.checks import check_config
from chunkcache.config.loading import ConfigError, load_config, server_table
from chunkcache.config.settings import EngineConfig, StoreSettings

__all__ = ["ConfigError", "EngineConfig", "StoreSettings", "check_config", "load_config", "server_table"]
