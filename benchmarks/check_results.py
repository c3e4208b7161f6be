"""Does every figure in a RESULTS.md table have its raw line?

    python benchmarks/check_results.py [--results benchmarks/RESULTS.md]

Reads every table of RESULTS.md and every raw file beside it (`*.jsonl`: every number in every
JSON line, nested values and numbers inside strings included; `*.txt`: the captured outputs),
and lists the table figures that no raw value gives at the precision shown: 466.9 is given by
466.87, 3.18 by 3.1801, 1,000 by 1000, 990 (two significant digits) by 989.1, 4.4k by 4,412. A table row, or else its heading, that names a script
(`train_throughput.py`) is checked against that script's lines only; else the scripts its
section (heading to heading) names; else every raw value. A figure that is not a measurement - a ratio or a mean
worked out from raw values, a setting - is marked in its table by a trailing `*`
(`3.18*`), and the table's text says how it was worked out. Numbers inside backticks (configs,
commands) and inside words (resnet50, jpeg70) are not figures. Exits 1 when figures lack a raw
line, printing them with their table and row.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
# A figure: digits with optional thousands separators and decimals, not glued to letters,
# underscores or other digits (so resnet50, jpeg70, 4:4:4 or 2026-12-01 are not figures).
FIGURE = re.compile(r"(?<![\w.:/-])(\d{1,3}(?:,\d{3})+|\d+)(\.\d+)?(k?)(?![\w:/-]|\.\d)(\*?)")
NUMBER = re.compile(r"-?\d+(?:\.\d+)?(?:[eE][-+]?\d+)?")


def raw_values(folder: Path) -> dict[str, set[float]]:
    """Every number of the raw files, by the benchmark that printed it ("" for .txt outputs)."""
    values: dict[str, set[float]] = {}

    def walk(x, into: set[float]):
        if isinstance(x, bool):
            return
        if isinstance(x, (int, float)):
            into.add(float(x))
        elif isinstance(x, str):
            into.update(float(n) for n in NUMBER.findall(x))
        elif isinstance(x, dict):
            for v in x.values():
                walk(v, into)
        elif isinstance(x, list):
            for v in x:
                walk(v, into)

    for path in sorted(folder.glob("*.jsonl")):
        for line in path.read_text().splitlines():
            if line.strip():
                record = json.loads(line)
                walk(record, values.setdefault(str(record.get("benchmark") or ""), set()))
    for path in sorted(folder.glob("*.txt")):
        values.setdefault("", set()).update(float(n) for n in NUMBER.findall(path.read_text()))
    return values


def scripts_named(text: str) -> list[str]:
    """The benchmark scripts a row or heading names in backticks: `train_throughput.py` -> train_throughput."""
    return re.findall(r"`(?:python )?(?:benchmarks/)?(\w+)\.py", text)


def table_figures(markdown: str):
    """((heading, scripts), row text, figure text, value, tolerance) of every figure in a table body
    row; a section runs from one heading to the next, and its scripts are those it names."""
    sections = re.split(r"(?m)^(?=#)", markdown)
    for section in sections:
        heading = section.splitlines()[0].lstrip("# ").strip() if section.strip() else ""
        scripts = sorted(set(scripts_named(section)))
        header_seen = False
        for line in section.splitlines():
            if not line.startswith("|"):
                header_seen = False
                continue
            if not header_seen:  # the header row of a table
                header_seen = True
                continue
            if set(line) <= set("|-: "):  # the separator row
                continue
            text = re.sub(r"`[^`]*`", " ", line)  # commands, configs, paths
            for cell in text.strip("|").split("|"):
                for m in FIGURE.finditer(cell.replace("**", "")):
                    whole, fraction, thousands, derived = m.groups()
                    if derived:
                        continue
                    figure = whole + (fraction or "") + thousands
                    value = float((whole + (fraction or "")).replace(",", "")) * (1000 if thousands else 1)
                    # The precision shown: 466.9 -> 0.05; 990 or 1,400 (rounded) -> 5 or 50; 4.4k -> 50.
                    if fraction:
                        tolerance = 0.5 * 10.0 ** -(len(fraction) - 1)
                    else:
                        digits = whole.replace(",", "")
                        tolerance = 0.5 * 10.0 ** (len(digits) - len(digits.rstrip("0")) if digits != "0" else 0)
                    if thousands:
                        tolerance *= 1000
                    yield (heading, scripts_named(line) or scripts), line, figure, value, tolerance


def given_by(value: float, tolerance: float, raw: set[float]) -> bool:
    return any(abs(v - value) <= tolerance + 1e-9 for v in raw)


def missing(results: Path) -> list[tuple[str, str, str]]:
    """Figures no raw value of the scripts their row or section names gives."""
    raw = raw_values(results.parent)
    everything = set().union(*raw.values()) if raw else set()
    gaps = []
    captured = raw.get("", set())  # the .txt outputs count for every table
    for (heading, scripts), row, figure, value, tolerance in table_figures(results.read_text()):
        chosen = (v for k, v in raw.items() if any(k.startswith(s) for s in scripts))
        pool = captured.union(*chosen) if scripts else everything
        if not given_by(value, tolerance, pool):
            gaps.append((heading, row, figure))
    return gaps


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--results", default=str(HERE / "RESULTS.md"))
    args = p.parse_args(argv)
    gaps = missing(Path(args.results))
    for heading, row, figure in gaps:
        print(f"{figure}: no raw line gives it\n    in '{heading}': {row[:160]}")
    print(f"{len(gaps)} figures without a raw line" if gaps else "every table figure has its raw line")
    return 1 if gaps else 0


if __name__ == "__main__":
    sys.exit(main())
