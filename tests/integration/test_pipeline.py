"""The lean pipelined Redis connection against real redis-servers."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections.abc import Iterator
from dataclasses import replace

import pytest
import redis

from keyguard.errors import ConnectionFailed as PipelineConnectionError
from keyguard.errors import ReplyError
from keyguard.settings import Settings
from keyguard.store.pipeline import KEY_MEMO_SIZE, PipelinedRedis
from tests.integration.conftest import run
from tests.support.procs import RedisServer, running_redis

SCRIPT = "return {KEYS[1], ARGV[1]}"


@pytest.fixture
def own_redis() -> Iterator[RedisServer]:
    with running_redis() as server:
        yield server


def conn(url: str, timeout: float = 0.5, linger_ms: float = 1.0) -> PipelinedRedis:
    settings = replace(Settings(), redis_url=url, redis_timeout=timeout, redis_linger_ms=linger_ms)
    return PipelinedRedis(settings)


class PacedClock:
    """A clock that says `step` seconds passed between any two commands."""

    def __init__(self, step: float) -> None:
        self.now = time.perf_counter()  # continues the real clock the connection used
        self.step = step

    def __call__(self) -> float:
        self.now += self.step
        return self.now


def count_writes(rc: PipelinedRedis) -> list[int]:
    """The number of commands in each write `rc` makes from now on."""
    writes: list[int] = []
    flush_now = rc.flush_now

    def counting() -> None:
        if rc._buffer:
            writes.append(len(rc._buffer))
        flush_now()

    rc.flush_now = counting  # type: ignore[method-assign]
    return writes


def test_quiet_commands_go_out_in_the_same_iteration(own_redis: RedisServer) -> None:
    """At 500 commands/s nothing lingers: a command is written two loop turns later."""

    async def scenario() -> None:
        rc = conn(own_redis.url, linger_ms=50)
        try:
            assert await rc.execute("PING") == "PONG"
            rc._clock = PacedClock(0.002)
            writes = count_writes(rc)
            for i in range(20):
                reply = asyncio.ensure_future(rc.execute("ECHO", f"q{i}"))
                for _ in range(3):  # the task's step, the flush, this check
                    await asyncio.sleep(0)
                assert not rc._buffer, "a quiet command waited for the linger"
                assert await reply == f"q{i}"
            assert writes == [1] * 20
        finally:
            rc.close()

    run(scenario)


def test_busy_commands_share_writes(own_redis: RedisServer) -> None:
    """Commands arriving one per loop turn, 10,000/s: once the rate is seen, they
    share writes (each still gets its own reply, in order)."""

    async def scenario() -> None:
        rc = conn(own_redis.url, linger_ms=50)
        try:
            assert await rc.execute("PING") == "PONG"
            rc._clock = PacedClock(0.0001)
            writes = count_writes(rc)
            replies = []
            for i in range(200):
                replies.append(asyncio.ensure_future(rc.execute("ECHO", f"b{i}")))
                await asyncio.sleep(0)
            assert await asyncio.gather(*replies) == [f"b{i}" for i in range(200)]
            assert sum(writes) == 200
            # About 33 commands pass before the moving average of gaps falls under
            # linger / BUSY_BATCH; after that, one or a few writes carry the rest.
            # (Without the linger, seen: 66 writes of 1 to 3 commands.)
            assert len(writes) <= 45, writes
            assert max(writes) >= 50, writes
        finally:
            rc.close()

    run(scenario)


def test_linger_zero_never_waits(own_redis: RedisServer) -> None:
    async def scenario() -> None:
        rc = conn(own_redis.url, linger_ms=0)
        try:
            assert await rc.execute("PING") == "PONG"
            rc._clock = PacedClock(0.00001)
            for i in range(50):
                reply = asyncio.ensure_future(rc.execute("ECHO", f"z{i}"))
                for _ in range(3):
                    await asyncio.sleep(0)
                assert not rc._buffer
                assert await reply == f"z{i}"
        finally:
            rc.close()

    run(scenario)


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


def test_script_calls_with_memoized_keys_reach_the_right_keys(own_redis: RedisServer) -> None:
    """The encoded key list of a script call is memoized (and the memo bounded): every
    call still sends its own keys and arguments, also when the memo starts over."""

    async def scenario() -> None:
        rc = conn(own_redis.url)
        try:
            script = "return {#KEYS, KEYS[1], KEYS[#KEYS], ARGV[1], #ARGV}"
            calls = [((f"kg:{{h{i % 7}}}:a", f"kg:{{h{i}}}:b"), (i, "x" * i)) for i in range(40)]
            calls.append((("één", "ü:{ß}"), ("ARGV with spaces", b"\x00bytes", 3)))
            # Loaded first: a call that meets NOSCRIPT is sent again as EVAL, unmemoized.
            await rc.execute("SCRIPT", "LOAD", script)
            replies = await asyncio.gather(*(rc.evalsha(script, k, a) for k, a in calls))
            for (keys, args), reply in zip(calls, replies, strict=True):
                assert reply == [len(keys), keys[0], keys[-1], str(args[0]), len(args)]
            rc._key_memo.update({(str(n),): b"" for n in range(KEY_MEMO_SIZE)})
            assert await rc.evalsha(script, ("k1", "k2"), ("v",)) == [2, "k1", "k2", "v", 1]
            assert len(rc._key_memo) == 1
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
