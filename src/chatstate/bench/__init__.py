"""The benchmark suite: chatstate measured side by side with its floors, in the same run.

Run it as ``chatstate bench`` (``--help`` for the options; it needs the ``bench`` extra:
``pip install "chatstate[bench]"``), or from code::

    report = await run_suite(BenchOptions.create(quick=True), redis_url="redis://localhost:6379/0")
    report.write_json(Path("bench.json"))

Every scenario runs ours and its floor in alternating rounds, so a noisy machine moves both; the
ratio ours / floor is the figure that counts (the targets: docs/benchmarks.md). Importing this
package needs neither rich nor matplotlib: they are imported when a table is printed or a plot
drawn.
"""

from chatstate.bench.options import BenchError, BenchOptions
from chatstate.bench.results import Report, Row, Target
from chatstate.bench.runner import run_suite

__all__ = ["BenchError", "BenchOptions", "Report", "Row", "Target", "run_suite"]
