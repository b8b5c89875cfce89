"""The Redis server's instructions per script call (the append script, or the read script with
a sliding expiry), on several checkouts: a count that the machine's load does not move.

Each version runs against a redis-server of its own under ``valgrind --tool=callgrind``,
counting only inside ``evalShaCommand`` (the scripts, nothing of the networking): 100 sessions
are seeded with 20 entries of 200 B, then ``--calls`` calls are made, and again with three times
as many; the difference over the difference in calls is the cost of one call, so start-up and
seeding drop out. The calls go through the backend (``RedisStateStore(...).backend``): the turn's
append (2 entries, ``max_entries=20``, a TTL), or ``read`` with ``touch``::

    python benchmarks/redis_script_instructions.py \\
        main=/work/wt-main/src mine=src --what append --calls 2000

(``NAME=PYTHONPATH``: each version's source tree, run by this interpreter.)
"""

from __future__ import annotations

import argparse
import os
import re
import socket
import subprocess
import sys
import tempfile
import time

_CALLS = r"""
import asyncio, sys, uuid
from chatstate.stores.redis import RedisStateStore

async def main(url, n, what):
    async with RedisStateStore.from_url(url, prefix="b") as store:
        backend = store.backend
        text = [b"x" * 190 + f"{i:010d}".encode() for i in range(1000)]
        wid = lambda: uuid.uuid4().hex[:16]
        for s in range(100):
            await backend.append(f"s{s}", text[:20], max_entries=20, ttl=3600, write_id=wid(),
                                 fence=None)
        for t in range(n):
            s, at = f"s{t % 100}", (t * 2) % 998
            if what == "append":
                await backend.append(s, text[at:at + 2], max_entries=20, ttl=3600,
                                     write_id=wid(), fence=None)
            else:
                await backend.read(s, limit=20, summary=False, touch=3600, numbers=False)
        try:
            await store.client.execute_command("SHUTDOWN", "NOSAVE")
        except Exception:
            pass  # the shutdown drops the connection

asyncio.run(main(sys.argv[1], int(sys.argv[2]), sys.argv[3]))
"""


def _port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def _instructions(source: str, calls: int, what: str, workdir: str) -> int:
    """The instructions the server ran in scripts for ``calls`` calls (and the seeding)."""
    port, out = _port(), os.path.join(workdir, f"callgrind.{calls}.out")
    server = subprocess.Popen(
        ["valgrind", "--tool=callgrind", "--toggle-collect=evalShaCommand",
         f"--callgrind-out-file={out}", "redis-server", "--port", str(port), "--save", "",
         "--appendonly", "no"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        for _ in range(200):
            with socket.socket() as probe:
                if probe.connect_ex(("127.0.0.1", port)) == 0:
                    break
            time.sleep(0.1)
        env = {**os.environ, "PYTHONPATH": source}
        url = f"redis://127.0.0.1:{port}/0"
        subprocess.run([sys.executable, "-c", _CALLS, url, str(calls), what], env=env, check=True)
        server.wait(timeout=120)
    finally:
        if server.poll() is None:
            server.kill()
    with open(out) as report:
        found = re.search(r"^(?:totals|summary): (\d+)", report.read(), re.MULTILINE)
    assert found is not None, f"no totals in {out}"
    return int(found.group(1))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("versions", nargs="+", metavar="NAME=PYTHONPATH")
    parser.add_argument("--what", choices=["append", "read"], default="append")
    parser.add_argument("--calls", type=int, default=2000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as workdir:
        for version in args.versions:
            name, _, source = version.partition("=")
            few = _instructions(os.path.abspath(source), args.calls, args.what, workdir)
            many = _instructions(os.path.abspath(source), 3 * args.calls, args.what, workdir)
            print(f"{name:>12}  {args.what}: {(many - few) / (2 * args.calls):,.0f} instructions/call")


if __name__ == "__main__":
    main()
