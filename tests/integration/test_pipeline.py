"""The lean pipelined Redis connection against real redis-servers."""

from __future__ import annotations

import asyncio
import os
import signal
from collections.abc import Iterator
from dataclasses import replace

import pytest
import redis

from keyguard.settings import Settings
from keyguard.store.pipeline import PipelineConnectionError, PipelinedRedis, ReplyError
from tests.integration.conftest import run
from tests.support.procs import RedisServer, running_redis

SCRIPT = "return {KEYS[1], ARGV[1]}"


@pytest.fixture
def own_redis() -> Iterator[RedisServer]:
    with running_redis() as server:
        yield server


def conn(url: str, timeout: float = 0.5) -> PipelinedRedis:
    return PipelinedRedis(replace(Settings(), redis_url=url, redis_timeout=timeout))


def test_many_concurrent_commands_get_their_own_replies(own_redis: RedisServer) -> None:
    async def scenario() -> None:
        rc = conn(own_redis.url)
        try:
            replies = await asyncio.gather(*(rc.execute("ECHO", f"n{i}") for i in range(500)))
            assert replies == [f"n{i}" for i in range(500)]
            with pytest.raises(ReplyError):
                await rc.execute("NOSUCHCOMMAND")
            assert await rc.execute("PING") == "PONG"  # the stream stays in step
        finally:
            rc.close()

    run(scenario)


def test_evalsha_falls_back_to_eval_after_script_flush(own_redis: RedisServer) -> None:
    async def scenario() -> None:
        rc = conn(own_redis.url)
        try:
            assert await rc.evalsha(SCRIPT, ["k"], ["v"]) == ["k", "v"]
            await rc.execute("SCRIPT", "FLUSH")
            assert await rc.evalsha(SCRIPT, ["k2"], ["v2"]) == ["k2", "v2"]
        finally:
            rc.close()

    run(scenario)


def test_reconnects_after_redis_restart(own_redis: RedisServer) -> None:
    async def scenario() -> None:
        rc = conn(own_redis.url)
        try:
            assert await rc.execute("PING") == "PONG"
            own_redis.kill()
            with pytest.raises(PipelineConnectionError):
                await rc.execute("PING")
            own_redis.start()
            assert await rc.execute("PING") == "PONG"
        finally:
            rc.close()

    run(scenario)


def test_a_stuck_server_times_out_instead_of_hanging(own_redis: RedisServer) -> None:
    async def scenario() -> None:
        rc = conn(own_redis.url, timeout=0.2)
        try:
            assert await rc.execute("PING") == "PONG"
            assert own_redis.proc is not None
            os.kill(own_redis.proc.pid, signal.SIGSTOP)
            try:
                with pytest.raises(PipelineConnectionError, match="timeout"):
                    await asyncio.wait_for(rc.execute("PING"), 5)
            finally:
                os.kill(own_redis.proc.pid, signal.SIGCONT)
            assert await rc.execute("PING") == "PONG"
        finally:
            rc.close()

    run(scenario)


def test_password_and_database_selection() -> None:
    with running_redis(["--requirepass", "s3cret"]) as server:

        async def scenario() -> None:
            good = conn(f"redis://:s3cret@127.0.0.1:{server.port}/3")
            bad = conn(f"redis://:wrong@127.0.0.1:{server.port}/0")
            try:
                await good.execute("SET", "where", "db3")
                assert await good.execute("GET", "where") == "db3"
                with pytest.raises(PipelineConnectionError, match="handshake"):
                    await bad.execute("PING")
            finally:
                good.close()
                bad.close()

        run(scenario)
        client = redis.Redis(port=server.port, password="s3cret", db=3)
        assert client.get("where") == b"db3"
        client.close()


def test_unix_socket(tmp_path_factory: pytest.TempPathFactory) -> None:
    sock = tmp_path_factory.mktemp("sock") / "redis.sock"
    with running_redis(["--unixsocket", str(sock), "--unixsocketperm", "700"]):

        async def scenario() -> None:
            rc = conn(f"unix://{sock}")
            try:
                assert await rc.execute("PING") == "PONG"
            finally:
                rc.close()

        run(scenario)
