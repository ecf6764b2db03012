"""Report pages: a list of blocks rendered twice, as Markdown (plots as PNG files beside it) and as one
self-contained HTML file (plots inline as base64 PNG, a few lines of inline JavaScript, nothing fetched),
so the two never disagree.

Blocks: heading, paragraph, paragraph with a link to a file beside the page, table, paged table, image, code,
folded group, and a samples browser. In the HTML a table longer than a page is paged, and the samples browser
filters its rows by benchmark, verdict and text; without JavaScript every row is shown. In Markdown a paged
table shows its first rows and says where the rest are.
"""

from __future__ import annotations

import base64
import html
import io
import re
from pathlib import Path
from typing import Any

PAGE_ROWS = 25  # rows a page of a paged table in the HTML
MD_ROWS = 50  # rows of a paged table the Markdown shows
SAMPLE_CHARS = 4000  # of a completion in the samples browser (the file keeps it whole)
ANSWER_CHARS = 40  # of a gold or given answer in a table cell (a rambling answer runs to the end of the completion)


# --- blocks ----------------------------------------------------------------------------------------------


def h(level: int, text: str) -> tuple:
    return ("h", level, text)


def p(text: str) -> tuple:
    return ("p", text)


def link(text: str, href: str, after: str = ".") -> tuple:
    """A paragraph: `text`, a link to the file `href` beside the page (relative, so the folder can move), `after`."""
    return ("link", text, href, after)


def table(headers: list, rows: list, text: bool = False) -> tuple:
    """A table; `text`: every column is words (left-aligned in the HTML), not numbers beside a first label column."""
    return ("table", headers, rows, text)


def paged(headers: list, rows: list, rest: str) -> tuple:
    """A table of any length, of words (left-aligned): paged in the HTML, its first MD_ROWS rows in Markdown with
    `rest` saying where the others are."""
    return ("paged", headers, rows, rest)


def code(text: str) -> tuple:
    return ("code", text)


def fold(summary: str, blocks: list, open_: bool = False) -> tuple:
    """Blocks shown folded (HTML <details>), opened on a click (or open at first with `open_`)."""
    return ("fold", summary, blocks, open_)


def image(name: str, fig: Any) -> tuple:
    """An image block: the figure as PNG bytes (closed afterwards)."""
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    return ("img", name, buf.getvalue())


def samples(records: list, link: str, shown: int) -> tuple:
    """The per-sample records of an evaluation: browsable and filterable in the HTML (the first `shown`),
    a link to the file `link` that holds them all."""
    return ("samples", records, link, shown)


def clip(text: str, limit: int) -> str:
    """`text` cut to `limit` characters, saying how many more there are."""
    return text if len(text) <= limit else text[:limit] + f" ... [{len(text) - limit} more characters]"


def slug(text: str) -> str:
    """The anchor of a heading: lower case, words joined by hyphens."""
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")


# --- Markdown ----------------------------------------------------------------------------------------------


def _md_cell(value: Any) -> str:
    return str(value).replace("|", "\\|").replace("\n", " ")


def _md_table(headers: list, rows: list) -> list:
    lines = ["| " + " | ".join(_md_cell(c) for c in headers) + " |", "|" + "|".join(" --- " for _ in headers) + "|"]
    return lines + ["| " + " | ".join(_md_cell(c) for c in row) + " |" for row in rows] + [""]


def _md_samples(b: tuple) -> list:
    records, link = b[1], b[2]
    wrong = sum(1 for r in records if not r["correct"])
    return [f"{len(records)} sample{'s' if len(records) != 1 else ''} ({wrong} not correct), one JSON line each: [{link}]({link}); "
            "report.html browses and filters them.", ""]


def to_markdown(blocks: list, plot_dir: Path) -> str:
    """Markdown text; image blocks are written to `plot_dir` and linked relative to the report."""
    lines = []
    for b in blocks:
        kind = b[0]
        if kind == "h":
            lines += ["#" * b[1] + " " + b[2], ""]
        elif kind == "p":
            lines += [b[1], ""]
        elif kind == "link":
            lines += [f"{b[1]}[{b[2]}]({b[2]}){b[3]}", ""]
        elif kind == "table":
            lines += _md_table(b[1], b[2])
        elif kind == "paged":
            lines += _md_table(b[1], b[2][:MD_ROWS])
            if len(b[2]) > MD_ROWS:
                lines += [f"... and {len(b[2]) - MD_ROWS} more {b[3]}", ""]
        elif kind == "code":
            fence = "````" if "```" in b[1] else "```"
            lines += [fence, b[1], fence, ""]
        elif kind == "img":
            plot_dir.mkdir(parents=True, exist_ok=True)
            (plot_dir / f"{b[1]}.png").write_bytes(b[2])
            lines += [f"![{b[1]}]({plot_dir.name}/{b[1]}.png)", ""]
        elif kind == "fold":
            lines += [f"<details><summary>{html.escape(b[1])}</summary>", "", to_markdown(b[2], plot_dir), "</details>", ""]
        elif kind == "samples":
            lines += _md_samples(b)
    return "\n".join(lines)


# --- HTML --------------------------------------------------------------------------------------------------

# pre and code name fonts before `monospace`: browsers draw a lone `monospace` at 13/16 of the size asked for.
# The search box is as many ch (the width of "0", wider than an average letter) as its placeholder has characters.
CSS = """body{font-family:system-ui,-apple-system,"Segoe UI",sans-serif;max-width:1180px;margin:1.5em auto;padding:0 1.2em;
color:#1f2328;line-height:1.45}h1{font-size:1.7em;margin-bottom:.2em}h2{margin-top:2em;padding-bottom:.25em;border-bottom:1px solid #d8dee4}
nav.toc{margin:.6em 0 1.2em;font-size:.95em}nav.toc a{margin-right:1.1em;color:#0969da;text-decoration:none}
table{border-collapse:collapse;margin:.8em 0;font-size:.92em}td,th{border:1px solid #d0d7de;padding:4px 9px;text-align:right;vertical-align:top}
th{background:#f6f8fa}tr:nth-child(even) td{background:#fbfcfd}td:first-child,th:first-child{text-align:left}
td{white-space:nowrap}td:last-child{white-space:normal;overflow-wrap:anywhere}table.text td,table.text th{text-align:left}table.text td{white-space:normal}
#samples-table td:last-child,#samples-table th:last-child{text-align:left}.answer{white-space:normal;overflow-wrap:anywhere}
code{background:#eff1f3;padding:0 4px;border-radius:3px;font-size:.92em}pre,code{font-family:ui-monospace,Menlo,Consolas,"DejaVu Sans Mono",monospace}
summary{cursor:pointer;font-weight:600;margin:.8em 0}pre{background:#f6f8fa;padding:.8em 1em;overflow-x:auto;white-space:pre-wrap;
border-radius:4px;font-size:.88em}img{max-width:100%;display:block;margin:.6em 0}
.pager{margin:.3em 0 1em;font-size:.9em;color:#57606a}.pager button{margin-right:.4em;padding:1px 9px}
.filters{display:flex;flex-wrap:wrap;gap:.8em;align-items:center;margin:.8em 0;font-size:.92em}
.filters input[type=search]{min-width:40ch;max-width:100%;padding:3px 6px}.v-correct{color:#1a7f37;font-weight:600}
.v-wrong{color:#cf222e;font-weight:600}.v-no-answer{color:#9a6700;font-weight:600}
td details summary{font-weight:normal;margin:0}td details pre{margin:.4em 0;max-width:720px}"""

# Paged tables show PAGE rows at a time; a filter bar (data-for = its table's id) hides the rows that do not
# match its selects (data-key: the row attribute data-KEY) and its search box (the row's text).
JS = """function pageTable(t){const size=+t.dataset.page,rows=[...t.tBodies[0].rows],nav=document.createElement('div');
nav.className='pager';t.after(nav);t.page=0;t.show=function(){const on=rows.filter(r=>!r.dataset.out);
const pages=Math.max(1,Math.ceil(on.length/size));t.page=Math.min(t.page,pages-1);rows.forEach(r=>r.hidden=true);
on.slice(t.page*size,(t.page+1)*size).forEach(r=>r.hidden=false);nav.innerHTML='';
const b=(l,d)=>{const x=document.createElement('button');x.textContent=l;x.disabled=t.page+d<0||t.page+d>=pages;
x.onclick=()=>{t.page+=d;t.show()};nav.append(x)};b('\\u2039 previous',-1);b('next \\u203a',1);
nav.append('rows '+(on.length?t.page*size+1:0)+'-'+Math.min(on.length,(t.page+1)*size)+' of '+on.length+
(on.length<rows.length?' matching ('+rows.length+' in all)':''))};t.show()}
function filterBar(f){const t=document.getElementById(f.dataset.for),rows=[...t.tBodies[0].rows];
const apply=()=>{const q=f.querySelector('input[type=search]').value.toLowerCase();
const sel=[...f.querySelectorAll('select')].filter(s=>s.value);rows.forEach(r=>{
const ok=sel.every(s=>r.dataset[s.dataset.key]===s.value)&&(!q||r.textContent.toLowerCase().includes(q));
if(ok)delete r.dataset.out;else r.dataset.out='1'});t.page=0;t.show()};
f.addEventListener('input',apply);f.addEventListener('change',apply)}
document.querySelectorAll('table[data-page]').forEach(pageTable);document.querySelectorAll('.filters').forEach(filterBar);"""


def _inline_code(text: str) -> str:
    """`x` (Markdown inline code) as <code>x</code> in already escaped HTML text."""
    return re.sub(r"`([^`]+)`", r"<code>\1</code>", text)


def _html_table(headers: list, rows: list, attrs: str = "") -> str:
    head = "".join(f"<th>{html.escape(str(c))}</th>" for c in headers)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table{attrs}><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _select(key: str, label: str, values: list) -> str:
    options = "".join(f'<option value="{html.escape(v)}">{html.escape(v)}</option>' for v in values)
    return f'<label>{label} <select data-key="{key}"><option value="">all</option>{options}</select></label>'


def _sample_row(r: dict, with_bench: bool) -> str:
    """The <tr> of one sample record, with the data attributes the filters read; `with_bench`: a benchmark column."""
    verdict = r["verdict"]
    attrs = (f' data-bench="{html.escape(r["bench"])}" data-verdict="{html.escape(verdict)}" '
             f'data-ended="{"yes" if r["finished"] else "cut"}"')
    completion = r["completion"] if len(r["completion"]) <= SAMPLE_CHARS else \
        r["completion"][:SAMPLE_CHARS] + f" ... [{len(r['completion']) - SAMPLE_CHARS} more characters in the file]"
    text = f"Q: {r['question']}\n\nA: {completion}"
    cells = [html.escape(str(c)) for c in ((r["bench"],) if with_bench else ()) + (r["id"], r["sample"])]
    cells.append(f'<span class="v-{slug(verdict)}">{html.escape(verdict)}</span>')
    cells += [f'<span class="answer">{html.escape(clip(str(c), ANSWER_CHARS))}</span>'
              for c in (r["gold"], r["answer"] if r["answer"] is not None else "")]
    cells += [html.escape(str(c)) for c in (r["length"], "yes" if r["finished"] else "cut")]
    question = r["question"] if len(r["question"]) <= 90 else r["question"][:90] + "..."
    cells.append(f"<details><summary>{html.escape(question)}</summary><pre>{html.escape(text)}</pre></details>")
    return "<tr" + attrs + ">" + "".join(f"<td>{c}</td>" for c in cells) + "</tr>"


def _html_samples(b: tuple) -> str:
    records, link, shown = b[1], b[2], b[3]
    head = [f'<p>{len(records)} samples, one JSON line each in <a href="{html.escape(link)}">{html.escape(link)}</a>'
            + (f"; the first {shown} are browsable here" if len(records) > shown else "") + ".</p>"]
    benches = list(dict.fromkeys(r["bench"] for r in records))
    bar = ['<div class="filters" data-for="samples-table">']
    if len(benches) > 1:
        bar.append(_select("bench", "benchmark", benches))
    bar.append(_select("verdict", "verdict", ["correct", "wrong", "no answer"]))
    bar.append(_select("ended", "ended", ["yes", "cut"]))
    bar.append('<input type="search" placeholder="search question, answer, completion, id">')
    bar.append("</div>")
    headers = ["benchmark"] * (len(benches) > 1) + ["id", "sample", "verdict", "gold", "answer", "tokens", "ended",
                                                    "question and completion (click)"]
    th = "".join(f"<th>{h_}</th>" for h_ in headers)
    rows = "".join(_sample_row(r, len(benches) > 1) for r in records[:shown])
    table_ = f'<table id="samples-table" data-page="{PAGE_ROWS}"><thead><tr>{th}</tr></thead><tbody>{rows}</tbody></table>'
    return "\n".join(head + bar + [table_])


def _html_block(b: tuple) -> str:
    kind = b[0]
    if kind == "h":
        return f'<h{b[1]} id="{slug(b[2])}">{html.escape(b[2])}</h{b[1]}>'
    if kind == "p":
        return f"<p>{_inline_code(html.escape(b[1]))}</p>"
    if kind == "link":
        href = html.escape(b[2])
        return f'<p>{_inline_code(html.escape(b[1]))}<a href="{href}">{href}</a>{html.escape(b[3])}</p>'
    if kind == "table":
        return _html_table(b[1], b[2], ' class="text"' if b[3] else "")
    if kind == "paged":
        return _html_table(b[1], b[2], ' class="text"' + (f' data-page="{PAGE_ROWS}"' if len(b[2]) > PAGE_ROWS else ""))
    if kind == "code":
        return f"<pre>{html.escape(b[1])}</pre>"
    if kind == "img":
        data = base64.b64encode(b[2]).decode("ascii")
        return f'<img alt="{html.escape(b[1])}" src="data:image/png;base64,{data}">'
    if kind == "fold":
        inner = "\n".join(_html_block(x) for x in b[2])
        return f"<details{' open' if b[3] else ''}><summary>{html.escape(b[1])}</summary>\n{inner}\n</details>"
    if kind == "samples":
        return _html_samples(b)
    raise ValueError(f"unknown block {kind!r}")


def _toc(blocks: list) -> str:
    """Links to the level-2 headings."""
    links = [f'<a href="#{slug(b[2])}">{html.escape(b[2])}</a>' for b in blocks if b[0] == "h" and b[1] == 2]
    return f'<nav class="toc">{"".join(links)}</nav>' if len(links) > 2 else ""


def to_html(blocks: list, title: str) -> str:
    """One self-contained HTML page (no external files: images inline as base64 PNG), contents after the title."""
    body = [_html_block(b) for b in blocks]
    if blocks and blocks[0][0] == "h" and blocks[0][1] == 1:
        body.insert(1, _toc(blocks))
    return (f"<!DOCTYPE html><html><head><meta charset=\"utf-8\"><meta name=\"viewport\" content=\"width=device-width\">"
            f"<title>{html.escape(title)}</title><style>{CSS}</style></head><body>\n" + "\n".join(body)
            + f"\n<script>{JS}</script>\n</body></html>\n")


def write_pages(out: Path, stem: str, blocks: list, title: str) -> Path:
    """Write `<stem>.md` (+ plots/) and `<stem>.html` into `out`; return the HTML path."""
    (out / f"{stem}.md").write_text(to_markdown(blocks, out / "plots"), encoding="utf-8")
    path = out / f"{stem}.html"
    path.write_text(to_html(blocks, title), encoding="utf-8")
    return path
