"""edgekit's self-contained benchmark runner: shipped to a board as one zip archive and run there.

Standard library only, plus the runtime being measured (onnxruntime, openvino or tvm, and numpy which they
ship with). Boards do not have edgekit installed, so nothing here imports edgekit: the modules import each
other relatively, and :func:`edgekit.devices.remote.archive.runner_archive` packs them as ``edgekit_runner``
into a zip application (``python3 runner-<hash>.pyz ...``). It talks to the host by printing one JSON object
per line on stdout ("events"); the host parses them as they stream in, so samples already taken survive a
connection dropped mid-run.

Sub-commands::

    runner.pyz info                      board description (OS, CPU, GPU, runtimes, governor, clocks, temps,
                                         emulation)
    runner.pyz hash FILE...              {"event": "hash", "files": {FILE: sha256}}
    runner.pyz run --dir D --model-file F --runtime onnxruntime [...]

Latency loop: warm-up, then timed runs until the distribution-free 95% confidence interval of the median
(order statistics of the binomial(n, 1/2)) lies within ``--target-rel-ci`` of the median, or the time
budget ends, or ``--max-runs`` is reached.

Exit codes: 0 ok, 2 bad arguments/artifact, 3 runtime missing, 4 runtime failed, 5 runtime not supported.
"""

from .stats import median_ci, percentile, rel_ci_halfwidth, summarize

__all__ = ["median_ci", "percentile", "rel_ci_halfwidth", "summarize"]
