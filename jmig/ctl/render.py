"""How jmigctl shows things to people: tables (rich), sizes, progress."""
from __future__ import annotations

import time

from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table



def table(console: Console, columns: list[str], rows: list[list], title: str | None = None) -> None:
    """A table: rich's on a terminal; otherwise plain text that never wraps,
    one row per line, columns padded with spaces in a fixed order (the last
    column, free text, unpadded), for grep, awk and cut."""
    cells = [["-" if c is None or c == "" else str(c) for c in r] for r in rows]
    if not console.is_terminal:
        out = console.file
        if title:
            out.write(f"# {title}\n")
        widths = [max([len(columns[i])] + [len(r[i]) for r in cells]) for i in range(len(columns))]
        for r in [columns, *cells]:
            line = "  ".join(c.ljust(w) for c, w in zip(r[:-1], widths[:-1]))
            out.write((line + "  " + r[-1] if len(r) > 1 else r[0]).rstrip() + "\n")
        out.flush()
        return
    t = Table(*columns, box=None, show_edge=False, pad_edge=False, header_style="bold",
              title=title)
    for r in cells:
        t.add_row(*r)
    console.print(t)


def plural(n: int, word: str) -> str:
    return f"{n} {word}" + ("" if n == 1 else "s")


def size(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GiB"


def perm(p: int) -> str:
    return ("r" + ("w" if p & 0x2 else "-") + ("u" if p & 0x4 else "-")
            + (" cow" if p & 0x800 else "") + (" share" if p & 0x400 else ""))


def duration(s: float | None) -> str:
    if s is None:
        return "-"
    if s < 1:
        return f"{s * 1000:.1f} ms"
    if s < 120:
        return f"{s:.2f} s"
    return f"{s / 60:.1f} min"


class ProgressBar:
    """A rich progress bar of pages done, with MiB/s; silent when not a TTY."""

    def __init__(self, console: Console | None, label: str):
        self.enabled = console is not None and console.is_terminal
        self.t0 = time.perf_counter()
        self.task = None
        self.progress = Progress(TextColumn("{task.description}"), BarColumn(),
                                 TextColumn("{task.completed}/{task.total} pages"),
                                 TextColumn("{task.fields[rate]}"), TimeRemainingColumn(),
                                 console=console, transient=True) if self.enabled else None
        self.label = label

    def __enter__(self):
        if self.progress:
            self.progress.__enter__()
        return self

    def __exit__(self, *exc):
        if self.progress:
            self.progress.__exit__(*exc)

    def update(self, kind, data) -> None:
        if kind != "progress" or not self.progress or not isinstance(data, dict):
            return
        dt = max(time.perf_counter() - self.t0, 1e-6)
        rate = f"{data.get('bytes', 0) / (1 << 20) / dt:.1f} MiB/s"
        label = self.label
        if data.get("round"):
            label = f"{label}, round {data['round']}"       # done/total count this round's pages
        if self.task is None:
            self.task = self.progress.add_task(label, total=data.get("total", 0), rate=rate)
        self.progress.update(self.task, completed=data.get("done", 0), description=label,
                             total=data.get("total", 0), rate=rate)
