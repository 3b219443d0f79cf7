"""A report as a list of blocks (heading, paragraph, list, table, figure, links), rendered to Markdown (figures
as files under figures/) and to self-contained HTML (figures embedded as base64 PNG, no external resource), so the
two renderings cannot disagree."""

from __future__ import annotations

import base64
import html
import math
from dataclasses import dataclass, field
from typing import Any

import polars as pl


@dataclass
class Document:
    blocks: list[tuple] = field(default_factory=list)

    def h(self, level: int, text: str) -> None:
        self.blocks.append(("h", level, text))

    def p(self, text: str) -> None:
        self.blocks.append(("p", text))

    def ul(self, items: list[str]) -> None:
        if items:
            self.blocks.append(("ul", items))

    def table(self, frame: pl.DataFrame, caption: str = "") -> None:
        self.blocks.append(("table", frame, caption))

    def figure(self, name: str, title: str, data: bytes) -> None:
        self.blocks.append(("fig", name, title, data))

    def links(self, items: list[tuple[str, str]]) -> None:
        """A list of links to sibling reports: (text, path without suffix), to .md from Markdown, .html from HTML."""
        if items:
            self.blocks.append(("links", items))


def fmt(value: Any, digits: int = 4) -> str:
    """A number as a table shows it: signed with `digits` decimals (4 and up), else `digits` significant figures;
    whole numbers bare; None and non-finite values as a dash."""
    if value is None:
        return "–"
    if isinstance(value, float):
        if not math.isfinite(value):
            return "–"
        if value == int(value) and abs(value) >= 1:
            return str(int(value))
        return f"{value:+.{digits}f}" if digits >= 4 else f"{value:.{digits}g}"
    return str(value)



def render_markdown(document: Document) -> str:
    lines: list[str] = []
    for block in document.blocks:
        kind = block[0]
        if kind == "h":
            lines += [f"{'#' * block[1]} {block[2]}", ""]
        elif kind == "p":
            lines += [block[1], ""]
        elif kind == "ul":
            lines += [f"- {item}" for item in block[1]] + [""]
        elif kind == "table":
            frame, caption = block[1], block[2]
            cells = [[str(v).replace("|", "\\|").replace("\n", " ") if v is not None else "–" for v in row]
                     for row in frame.rows()]
            lines += ["| " + " | ".join(frame.columns) + " |", "|" + "---|" * len(frame.columns)]
            lines += ["| " + " | ".join(row) + " |" for row in cells]
            lines += ["", f"*{caption}*" if caption else "", ""]
        elif kind == "fig":
            lines += [f"![{block[2]}](figures/{block[1]}.png)", ""]
        elif kind == "links":
            lines += [f"- [{text}]({path}.md)" for text, path in block[1]] + [""]
    return "\n".join(lines).rstrip() + "\n"


STYLE = """
body { font-family: system-ui, sans-serif; max-width: 1150px; margin: 2em auto; padding: 0 1em; color: #222; }
div.scroll { overflow-x: auto; }
table { border-collapse: collapse; margin: 0.5em 0; font-size: 0.8em; }
th, td { border: 1px solid #ccc; padding: 3px 6px; text-align: left; }
th { background: #f3f3f3; }
caption { caption-side: bottom; font-style: italic; font-size: 0.9em; padding-top: 4px; text-align: left; }
figure { margin: 1em 0; } figure img { max-width: 100%; border: 1px solid #eee; }
td.supported { background: #e3f4e1; } td.CONTRADICTED { background: #f9dcdc; font-weight: bold; }
td.inconclusive { background: #fdf5dc; } td.equivalent { background: #e3ecf7; } td.exploratory { color: #666; }
td.below, td.at { background: #eee; font-style: italic; }
"""


def render_html(document: Document, title: str) -> str:
    parts = [f"<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
             f"<style>{STYLE}</style></head><body>"]
    for block in document.blocks:
        kind = block[0]
        if kind == "h":
            parts.append(f"<h{block[1]}>{html.escape(block[2])}</h{block[1]}>")
        elif kind == "p":
            parts.append(f"<p>{html.escape(block[1])}</p>")
        elif kind == "ul":
            parts.append("<ul>" + "".join(f"<li>{html.escape(item)}</li>" for item in block[1]) + "</ul>")
        elif kind == "table":
            frame, caption = block[1], block[2]
            head = "".join(f"<th>{html.escape(c)}</th>" for c in frame.columns)
            body = "".join("<tr>" + "".join(
                f"<td class='{html.escape(str(v).split(' ')[0])}'>{html.escape(str(v) if v is not None else '–')}</td>"
                if c == "verdict" else f"<td>{html.escape(str(v) if v is not None else '–')}</td>"
                for c, v in zip(frame.columns, row)) + "</tr>" for row in frame.rows())
            parts.append(f"<div class='scroll'><table><caption>{html.escape(caption)}</caption><thead><tr>{head}</tr>"
                         f"</thead><tbody>{body}</tbody></table></div>")
        elif kind == "fig":
            data = base64.b64encode(block[3]).decode("ascii")
            parts.append(f"<figure><img alt='{html.escape(block[2])}' src='data:image/png;base64,{data}'>"
                         f"<figcaption>{html.escape(block[2])}</figcaption></figure>")
        elif kind == "links":
            parts.append("<ul>" + "".join(f"<li><a href='{html.escape(path)}.html'>{html.escape(text)}</a></li>"
                                          for text, path in block[1]) + "</ul>")
    parts.append("</body></html>")
    return "\n".join(parts)
