"""Render docs/reliability.md's results table from the fault records of the last reliability runs.

The suite's tests record each fault they inject (tests/reliability/conftest.py); with
``GENPI_RELIABILITY_OUT=bench/results/reliability.json`` they land in that file, one row per fault kind,
with the count, what was checked and the test's own outcome. This script turns them into the table
between the markers in docs/reliability.md and prints the totals the closing note quotes.

Run: python bench/reliability_report.py [--records bench/results/reliability.json] [--doc docs/reliability.md]
"""

from __future__ import annotations

import argparse
import json
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BEGIN, END = "<!-- results:begin -->", "<!-- results:end -->"
CATEGORY_ORDER = (
    "kill",
    "server",
    "corrupt file",
    "bad input",
    "hostile generation",
    "disk",
    "concurrency",
    "security",
)


def _cell(text: str) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def totals(records: list[dict]) -> dict[str, dict[str, int]]:
    """Faults injected and survived (the test passed) per category."""
    out: dict[str, dict[str, int]] = defaultdict(lambda: {"injected": 0, "survived": 0, "rows": 0, "failed_rows": 0})
    for r in records:
        t = out[r["category"]]
        t["injected"] += int(r["count"])
        t["rows"] += 1
        if r["outcome"] == "passed":
            t["survived"] += int(r["count"])
        else:
            t["failed_rows"] += 1
    return dict(out)


def render(payload: dict) -> str:
    records = sorted(
        payload["records"],
        key=lambda r: (
            CATEGORY_ORDER.index(r["category"]) if r["category"] in CATEGORY_ORDER else len(CATEGORY_ORDER),
            r["test"],
        ),
    )
    lines = [
        f"Last recorded: {payload['updated']} ({len(records)} rows).",
        "",
        "| category | fault | how it was injected | times | result | test (seconds) |",
        "|---|---|---|---|---|---|",
    ]
    for r in records:
        result = ("pass" if r["outcome"] == "passed" else f"**{r['outcome'].upper()}**") + (
            f": {r['detail']}" if r["detail"] else ""
        )
        test = r["test"].split("::")[-1]
        lines.append(
            f"| {_cell(r['category'])} | {_cell(r['fault'])} | {_cell(r['injection'])} | {r['count']} | "
            f"{_cell(result)} | `{_cell(test)}` ({r['seconds']:.0f}) |"
        )
    lines += ["", "| category | faults injected | survived | rows failing |", "|---|---|---|---|"]
    for category, t in sorted(
        totals(records).items(), key=lambda kv: CATEGORY_ORDER.index(kv[0]) if kv[0] in CATEGORY_ORDER else 99
    ):
        lines.append(f"| {category} | {t['injected']} | {t['survived']} | {t['failed_rows']} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--records", default=str(ROOT / "bench" / "results" / "reliability.json"))
    parser.add_argument("--doc", default=str(ROOT / "docs" / "reliability.md"))
    args = parser.parse_args()
    records_path, doc = Path(args.records), Path(args.doc)
    if not records_path.is_file():
        raise SystemExit(f"{records_path}: no records; run the suite with GENPI_RELIABILITY_OUT={records_path} first")
    payload = json.loads(records_path.read_text())
    text = doc.read_text()
    if BEGIN not in text or END not in text:
        raise SystemExit(f"{doc}: the markers {BEGIN} and {END} are missing")
    head, rest = text.split(BEGIN, 1)
    _, tail = rest.split(END, 1)
    doc.write_text(f"{head}{BEGIN}\n{render(payload)}{END}{tail}")
    for category, t in totals(payload["records"]).items():
        print(f"{category}: {t['injected']} injected, {t['survived']} survived, {t['failed_rows']} rows failing")
    print(f"wrote the table into {doc}")


if __name__ == "__main__":
    main()
