"""Turn a captured terminal session (ANSI colours) into an SVG for the docs.

    COLUMNS=96 FORCE_COLOR=1 metallmix recommend DATA --llm fast > answer.ansi
    python scripts/terminal_screenshot.py answer.ansi docs/img/good-answer.svg \
        --title "metallmix recommend ../shared/data/medical/breastmnist.npz --llm fast"

rich renders the text with its colours in a terminal frame; the SVG stays sharp at any
width and its text is selectable. Lines after ``--stop-at`` (e.g. the MLflow hint with
this machine's paths) are left out.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from rich.console import Console
from rich.text import Text


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("ansi", type=Path)
    parser.add_argument("svg", type=Path)
    parser.add_argument("--title", default="metallmix")
    parser.add_argument("--width", type=int, default=96)
    parser.add_argument("--stop-at", default="MLflow run ", help="drop this line and after")
    args = parser.parse_args()
    raw = args.ansi.read_text()
    kept = []
    for line in raw.splitlines():
        if args.stop_at and Text.from_ansi(line).plain.startswith(args.stop_at):
            break
        kept.append(line)
    console = Console(record=True, width=args.width, force_terminal=True, color_system="256")
    console.print(Text.from_ansi("\n".join(kept)))
    args.svg.parent.mkdir(parents=True, exist_ok=True)
    args.svg.write_text(console.export_svg(title=args.title))
    print(f"wrote {args.svg}")


if __name__ == "__main__":
    main()
