"""Print the markdown table of the JSON-lines results the benchmarks' ``--json`` option appends.

    python benchmarks/suite_table.py gpu_suite_out/results.jsonl
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import results_table  # noqa: E402


def read_results(path: Path) -> list[dict]:
    """The records of a JSON-lines file, in order; blank lines skipped."""
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("results", type=Path, help="JSON-lines file written by the benchmarks' --json")
    print(results_table(read_results(parser.parse_args().results)))


if __name__ == "__main__":
    main()
