"""The `chunkcache` command line, in one package. main.py parses and dispatches; each part registers its
sub-commands: demo.py (`demo`), serve.py (`serve`, `ingest`, `ask`, `stats`), bench.py (`bench rag|api|replicas`
and the pass-through benches; `bench agents` comes from chunkcache/bench/agents.py). `python -m chunkcache.cli`
and the `chunkcache` script run `main`."""

from chunkcache.cli.main import build_parser, main

__all__ = ["build_parser", "main"]
