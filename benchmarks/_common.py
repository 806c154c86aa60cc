"""What every benchmark shares: the commit it measured, a printed table, and JSON written atomically."""

from __future__ import annotations

import json
import resource
import subprocess
import sys
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from amq_export import report

RESULTS = Path(__file__).parent / "results"


def commit() -> str:
    """Short hash of HEAD, with '+dirty' when the work tree has changes to tracked files."""
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                              check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], capture_output=True,
                               text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "uncommitted"
    return head + ("+dirty" if dirty else "")


def print_table(title: str, rows: list[dict[str, Any]], columns: list[str]) -> None:
    table = Table(title=title)
    for col in columns:
        table.add_column(col, justify="right")
    for row in rows:
        table.add_row(*(f"{row[c]:.4g}" if isinstance(row[c], float) else str(row[c]) for c in columns))
    Console(width=160).print(table)


def write_json(path: Path, payload: Any) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    return report.write_json(path, payload)


def float_checkpoint(arch: str, resolution: int, root: str | Path = "runs/float") -> Path:
    """Where the float baselines benchmark leaves a trained model and the Pareto benchmark looks for it."""
    return Path(root) / f"{arch}_darcy{resolution}.pt"


def peak_rss_mb() -> float:
    """This process's peak RSS in MB: ``VmHWM`` (its own address space), else ``ru_maxrss``.

    ``ru_maxrss`` is not enough in a child process: after fork + exec it starts from the parent's peak.
    """
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024  # kB
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def run_json_child(args: list[str]) -> dict[str, Any]:
    """Run ``python <args>`` in a fresh interpreter; its last line of stdout is a JSON object."""
    proc = subprocess.run([sys.executable, *args], stdout=subprocess.PIPE, text=True, check=True)
    return json.loads(proc.stdout.strip().splitlines()[-1])
