"""The Redis turn's CPU per turn, client and server, on several checkouts: a measure that a loaded
machine does not move the way it moves wall time.

The turn of ``chatstate bench`` (load the newest 20 messages, append 2 of 200 B with
``max_messages=20`` and a TTL), through the public API only, so that the same script runs on
0.1.0 and on today's store, and beside it the hand-written pydantic floor (``LRANGE``; ``MULTI``
``RPUSH`` ``LTRIM`` ``PEXPIRE`` ``EXEC``; ``Message.model_validate_json`` / ``model_dump_json``) in
the same process. Every session is seeded with 20 messages of English text, and every turn's two
messages are new text, as in the bench, so no cache is flattered. Per turn it reports the client's
CPU (``time.process_time`` of the process), the server's (``INFO cpu``, user + sys, of a
redis-server of its own that nothing else uses) and the wall throughput; the versions run in
turn, in fresh processes, alternating rounds::

    python benchmarks/redis_turn_cpu.py \\
        0.1.0=/work/wt-before/.venv/bin/python main=/work/main/.venv/bin/python \\
        mine=/work/main/.venv/bin/python:src --rounds 5 --sessions 1,100,1000

(``NAME=PYTHON[:PYTHONPATH]``.) With ``--cachegrind`` it counts each version's client
instructions per turn instead, under ``valgrind --tool=cachegrind`` (the difference between two
runs of ``--turns`` and twice as many, so start-up and seeding drop out): a count that does not
depend on the machine's load. ``--keep DIR`` keeps the cachegrind files, for ``cg_annotate``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Any

HISTORY, SIZE, TTL = 20, 200, 3600
_SOURCES = (str, dict, list, set, tuple, int, float, bytes, range, object, type, zip, map, sorted)


def _prose() -> str:
    text = " ".join(source.__doc__ or "" for source in _SOURCES) + " " + (json.__doc__ or "")
    return " ".join(text.encode("ascii", "ignore").decode().split())


class Texts:
    """Distinct 200-byte passages of English: a counter over the start of a strided slice."""

    def __init__(self) -> None:
        self._prose = _prose() * 2
        self._number = 0

    def __call__(self) -> str:
        self._number += 1
        start = (self._number * 7919) % (len(self._prose) // 2)
        mark = f"{self._number:x} "
        return mark + self._prose[start : start + SIZE - len(mark)]


# -- one process of one checkout: seeds, warms up, measures each side ------------------------------


async def _server_cpu(client: Any) -> float:
    info = await client.info("cpu")
    return float(info["used_cpu_user"]) + float(info["used_cpu_sys"])


async def _measure(args: argparse.Namespace) -> dict[str, list[dict[str, float]]]:
    from redis.asyncio import BlockingConnectionPool, Redis

    from chatstate import Message
    from chatstate.stores.redis import RedisStateStore

    prefix = f"cpu-{os.getpid()}"
    store = RedisStateStore.from_url(args.url, prefix=prefix)
    client = Redis(
        connection_pool=BlockingConnectionPool.from_url(args.url, max_connections=100, timeout=60)
    )
    texts = Texts()
    ids = [f"session-{index}" for index in range(args.sessions)]

    async def store_turn(session: str, user: str, reply: str) -> None:
        await store.load(session, limit=HISTORY)
        new = [Message(role="user", content=user), Message(role="assistant", content=reply)]
        await store.append(session, new, max_messages=HISTORY, ttl=TTL)

    def key(session: str) -> str:
        return f"{prefix}-floor:{{{session}}}:messages"

    async def floor_turn(session: str, user: str, reply: str) -> None:
        raw = await client.lrange(key(session), -HISTORY, -1)
        [Message.model_validate_json(entry) for entry in raw]
        new = [Message(role="user", content=user), Message(role="assistant", content=reply)]
        async with client.pipeline(transaction=True) as pipe:
            pipe.rpush(key(session), *[message.model_dump_json() for message in new])
            pipe.ltrim(key(session), -HISTORY, -1)
            pipe.pexpire(key(session), TTL * 1000)
            await pipe.execute()

    sides = {"store": store_turn, "floor": floor_turn}
    for session in ids:
        seed = [
            Message(role=("user", "assistant")[index % 2], content=texts())
            for index in range(HISTORY)
        ]
        await store.append(session, seed, max_messages=HISTORY, ttl=TTL)
        await client.rpush(key(session), *[message.model_dump_json() for message in seed])

    async def run(turn: Any, turns: int) -> None:
        # Each turn's text is made before the clock starts (both sides build the Messages).
        plans = [[(texts(), texts()) for _ in range(turns)] for _ in ids]

        async def session_loop(session: str, plan: list[tuple[str, str]]) -> None:
            for user, reply in plan:
                await turn(session, user, reply)

        # asyncio on purpose: redis.asyncio measured, and 0.1.0's environment has no anyio.
        await asyncio.gather(*map(session_loop, ids, plans))  # noqa: TID251

    order = args.order.split(",")
    for side in order:  # warm-up: connections, scripts, caches of the sides measured
        await run(sides[side], 2)
    figures: dict[str, list[dict[str, float]]] = {side: [] for side in order}
    for side in order + order[::-1] if args.repeats > 1 else order:
        turn, turns = sides[side], args.turns
        server = await _server_cpu(client)
        cpu, wall, times = time.process_time(), time.perf_counter(), os.times()
        await run(turn, turns)
        cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
        server = await _server_cpu(client) - server
        count = turns * len(ids)
        figures[side].append(
            {
                "client_us": cpu / count * 1e6,
                "client_sys_us": (os.times().system - times.system) / count * 1e6,
                "server_us": server / count * 1e6,
                "tps": count / wall,
            }
        )
    await store.aclose()
    await client.aclose()
    return figures


# -- the driver: a redis-server of its own, the versions in alternating rounds ---------------------


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


def _flushall(port: int) -> None:
    with socket.create_connection(("127.0.0.1", port)) as sock:
        sock.sendall(b"*1\r\n$8\r\nFLUSHALL\r\n")
        assert sock.recv(64).startswith(b"+OK")


def _command(spec: str, args: list[str]) -> tuple[list[str], dict[str, str]]:
    python, _, path = spec.partition(":")
    env = dict(os.environ)
    env.pop("PYTHONPATH", None)
    if path:
        env["PYTHONPATH"] = os.path.abspath(path)
    return [python, os.path.abspath(__file__), "--child", *args], env


def _child_args(url: str, sessions: int, turns: int, order: str, repeats: int) -> list[str]:
    return [f"--url={url}", f"--sessions={sessions}", f"--turns={turns}", f"--order={order}",
            f"--repeats={repeats}"]  # fmt: skip


def _turns_for(sessions: int, turns: int | None) -> int:
    # About 3,000 turns a run at 1 session, 5,000 at 100 and 1,000.
    return turns or {1: 3000}.get(sessions, max(2, 5000 // sessions))


def _spread(values: list[float]) -> str:
    return f"{statistics.median(values):9.1f} [{min(values):.1f}-{max(values):.1f}]"


def drive(args: argparse.Namespace) -> None:
    versions = dict(spec.split("=", 1) for spec in args.versions)
    levels = [int(level) for level in args.sessions_list.split(",")]
    port = _free_port()
    workdir = tempfile.mkdtemp(prefix="redis-turn-cpu-")
    server = subprocess.Popen(
        ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "",
         "--appendonly", "no", "--dir", workdir],
        stdout=subprocess.DEVNULL,
    )  # fmt: skip
    url = f"redis://127.0.0.1:{port}/0"
    try:
        for _ in range(100):
            try:
                _flushall(port)
                break
            except OSError:
                time.sleep(0.05)
        if args.cachegrind:
            _count(args, versions, url, port)
            return
        results: dict[tuple[str, int], dict[str, list[dict[str, float]]]] = {}
        names = list(versions)
        for round_ in range(args.rounds):
            for level in levels:
                # The versions in a rotated order each round, the sides alternating inside.
                for name in names[round_ % len(names) :] + names[: round_ % len(names)]:
                    _flushall(port)
                    order = "store,floor" if round_ % 2 == 0 else "floor,store"
                    child = _child_args(url, level, _turns_for(level, args.turns), order, 2)
                    command, env = _command(versions[name], child)
                    out = subprocess.run(command, env=env, check=True, capture_output=True)
                    figures = json.loads(out.stdout)
                    slot = results.setdefault((name, level), {"store": [], "floor": []})
                    for side in figures:
                        slot[side].append(_median_of(figures[side]))
                    print(f"round {round_ + 1} {name} {level}: {figures}", file=sys.stderr)
        _report(results, names, levels)
    finally:
        server.terminate()
        server.wait()


def _median_of(runs: list[dict[str, float]]) -> dict[str, float]:
    return {key: statistics.median(run[key] for run in runs) for key in runs[0]}


def _report(
    results: dict[tuple[str, int], dict[str, list[dict[str, float]]]],
    names: list[str],
    levels: list[int],
) -> None:
    print(
        "version  sessions  side   client us/turn   (of it sys)     server us/turn"
        "          wall turns/s"
    )
    for level in levels:
        for name in names:
            sides = results[(name, level)]
            for side in ("store", "floor"):
                runs = sides[side]
                print(
                    f"{name:8} {level:8}  {side:5}"
                    f" {_spread([run['client_us'] for run in runs]):>20}"
                    f" {statistics.median(run['client_sys_us'] for run in runs):6.1f}"
                    f" {_spread([run['server_us'] for run in runs]):>20}"
                    f" {_spread([run['tps'] for run in runs]):>22}"
                )
            ratios = [
                store["tps"] / floor["tps"]
                for store, floor in zip(sides["store"], sides["floor"], strict=True)
            ]
            cpu = [
                floor["client_us"] / store["client_us"]
                for store, floor in zip(sides["store"], sides["floor"], strict=True)
            ]
            print(
                f"{name:8} {level:8}  wall ratio {_spread(ratios)}"
                f"   floor/store client CPU {_spread(cpu)}"
            )


def _count(args: argparse.Namespace, versions: dict[str, str], url: str, port: int) -> None:
    turns = args.turns or 10
    keep = args.keep or tempfile.mkdtemp(prefix="cachegrind-")
    os.makedirs(keep, exist_ok=True)
    print(f"cachegrind files in {keep}", file=sys.stderr)
    for name, spec in versions.items():
        for side in args.order.split(","):
            counts = []
            for run_turns in (turns, 2 * turns):
                _flushall(port)
                out_file = os.path.join(keep, f"cachegrind.{name}.{side}.{run_turns}")
                command, env = _command(spec, _child_args(url, args.sessions, run_turns, side, 1))
                valgrind = ["valgrind", "--tool=cachegrind", "--cache-sim=no",
                            f"--cachegrind-out-file={out_file}"]  # fmt: skip
                done = subprocess.run(valgrind + command, env=env, capture_output=True, text=True)
                found = re.search(r"I\s+refs:\s+([\d,]+)", done.stderr)
                if done.returncode or not found:
                    raise SystemExit(f"{name} {side}: valgrind failed\n{done.stderr[-3000:]}")
                counts.append(int(found.group(1).replace(",", "")))
            per_turn = (counts[1] - counts[0]) / (args.sessions * turns)
            print(
                f"{name:8} {side:5} {args.sessions} sessions: {per_turn:10,.0f} instructions/turn"
            )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("versions", nargs="*", help="NAME=PYTHON[:PYTHONPATH]")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--sessions", dest="sessions_list", default="1,100,1000")
    parser.add_argument("--turns", type=int, default=None, help="turns per session and run")
    parser.add_argument("--cachegrind", action="store_true")
    parser.add_argument("--cachegrind-sessions", dest="cg_sessions", type=int, default=100)
    parser.add_argument("--keep", default=None, help="where to keep the cachegrind files")
    parser.add_argument("--order", default="store,floor")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--url", help=argparse.SUPPRESS)
    parser.add_argument("--repeats", type=int, default=2, help=argparse.SUPPRESS)
    args, _ = parser.parse_known_args()
    if args.child:
        args.sessions = int(args.sessions_list)
        print(json.dumps(asyncio.run(_measure(args))))
    else:
        args.sessions = args.cg_sessions
        drive(args)


if __name__ == "__main__":
    main()
