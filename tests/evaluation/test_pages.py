"""Report pages: the same blocks as Markdown and as one offline HTML file; paged tables, the samples browser."""

import re

from mathgrpo.evaluation.pages import (ANSWER_CHARS, PAGE_ROWS, fold, h, link, p, paged, samples, table, to_html,
                                       to_markdown)


def sample(i, verdict, bench="gsm8k", finished=True):
    return {"bench": bench, "id": f"q{i}", "sample": 0, "question": f"question {i} <b>?</b>", "gold": "7",
            "completion": f"[REASONING]work {i}[ANSWER]{7 if verdict == 'correct' else 3}",
            "answer": None if verdict == "no answer" else ("7" if verdict == "correct" else "3"),
            "correct": verdict == "correct", "verdict": verdict, "well_formed": True, "length": 9, "finished": finished}


def body_rows(page: str, table_id: str = "") -> list:
    """The <tr> elements of the body of the first table (or the one with `table_id`)."""
    start = page.index(f'<table id="{table_id}"') if table_id else page.index("<table")
    tbody = page[start:].split("<tbody>", 1)[1].split("</tbody>", 1)[0]
    return re.findall(r"<tr[^>]*>", tbody)


def test_long_tables_page_in_html_and_are_cut_in_markdown(tmp_path):
    rows = [[f"p{i}", i] for i in range(60)]
    blocks = [h(1, "T"), paged(["id", "n"], rows, "in compare.json")]
    page = to_html(blocks, "T")
    assert f'data-page="{PAGE_ROWS}"' in page and len(body_rows(page)) == 60  # all rows there, paged by the script
    md = to_markdown(blocks, tmp_path / "plots")
    assert "| p49 | 49 |" in md and "| p50 |" not in md and "... and 10 more in compare.json" in md
    short = to_html([paged(["id"], [["a"]], "x"), table(["id"], [["b"]])], "S")
    assert "data-page" not in short.split("<script>")[0]


def test_samples_browser_filters_by_benchmark_verdict_end_and_text():
    records = [sample(0, "correct"), sample(1, "wrong"), sample(2, "no answer", finished=False),
               sample(3, "wrong", bench="math500")]
    page = to_html([h(1, "E"), h(2, "Samples"), samples(records, "samples.jsonl", 1000)], "E")
    assert '<a href="samples.jsonl">samples.jsonl</a>' in page
    bar = page.split('<div class="filters" data-for="samples-table">', 1)[1].split("</div>", 1)[0]
    assert re.findall(r'data-key="(\w+)"', bar) == ["bench", "verdict", "ended"]
    assert '<option value="no answer">' in bar and '<option value="math500">' in bar and 'type="search"' in bar
    rows = body_rows(page, "samples-table")
    assert len(rows) == 4 and 'data-verdict="no answer"' in rows[2] and 'data-ended="cut"' in rows[2]
    assert 'data-bench="math500"' in rows[3]
    assert "question 0 &lt;b&gt;?&lt;/b&gt;" in page and "<b>?</b>" not in page  # text is escaped
    one_bench = to_html([samples(records[:3], "samples.jsonl", 2)], "E")
    assert 'data-key="bench"' not in one_bench and len(body_rows(one_bench, "samples-table")) == 2
    assert "3 samples" in one_bench and "the first 2 are browsable here" in one_bench


def test_html_is_one_offline_file_with_contents_and_folds(tmp_path):
    blocks = [h(1, "E"), p("`m` ran"), h(2, "Results"), h(2, "Samples"), h(2, "Settings"),
              fold("Full configuration", [p("x")]), fold("open one", [p("y")], open_=True)]
    page = to_html(blocks, "E")
    assert '<nav class="toc"><a href="#results">Results</a><a href="#samples">Samples</a>' in page
    assert '<h2 id="settings">Settings</h2>' in page and "<code>m</code>" in page
    assert "<details><summary>Full configuration</summary>" in page and "<details open><summary>open one" in page
    assert not re.search(r'(src|href)="(https?:)?//', page) and "<link" not in page and page.count("<script>") == 1
    md = to_markdown(blocks + [samples([sample(0, "wrong")], "samples.jsonl", 10)], tmp_path / "plots")
    assert "1 sample (1 not correct), one JSON line each: [samples.jsonl](samples.jsonl)" in md


def test_code_and_completions_name_a_font_before_monospace():
    """A lone `monospace` is drawn at 13/16 size: completions in the samples browser came out about 10 pixels."""
    page = to_html([p("`x`"), samples([sample(0, "wrong")], "samples.jsonl", 10)], "E")
    css = page.split("<style>", 1)[1].split("</style>", 1)[0]
    families = {m.group(1): m.group(2) for m in re.finditer(r"(?:^|})([\w,]+)\{[^}]*?font-family:([^;}]+)", css)}
    for tag in ("pre", "code"):
        rule = next(v for k, v in families.items() if tag in k.split(","))
        assert rule.split(",")[-1].strip() == "monospace" and rule.count(",") >= 1, rule


def test_cells_of_word_tables_wrap_and_numbers_stay_on_one_line():
    page = to_html([table(["source"], [["a long citation"]], text=True)], "T")
    css = page.split("<style>", 1)[1].split("</style>", 1)[0]
    assert "td{white-space:nowrap}" in css and "table.text td{white-space:normal}" in css
    assert css.index("td{white-space:nowrap}") < css.index("table.text td{white-space:normal}")


def test_a_rambling_answer_is_cut_in_its_cell_and_whole_in_the_completion():
    """An answer runs to the end of the completion: kept whole in its cell, one row was 3000 pixels wide."""
    long = sample(0, "wrong")
    long["answer"] = "3" * 500
    long["completion"] = "[REASONING]w[ANSWER]" + long["answer"]
    page = to_html([samples([long], "samples.jsonl", 10)], "E")
    cells = re.findall(r'<span class="answer">([^<]*)</span>', page)
    assert cells == ["7", "3" * ANSWER_CHARS + f" ... [{500 - ANSWER_CHARS} more characters]"]
    assert "[ANSWER]" + "3" * 500 in page
    assert ".answer{white-space:normal;overflow-wrap:anywhere}" in page


def test_a_link_to_a_file_beside_the_page(tmp_path):
    """The same paragraph and relative link in both renderings; text and name escaped in the HTML."""
    block = link("The `data` <all>: ", "a&b.json")
    page = to_html([block], "L")
    assert '<p>The <code>data</code> &lt;all&gt;: <a href="a&amp;b.json">a&amp;b.json</a>.</p>' in page
    assert to_markdown([block], tmp_path / "plots") == "The `data` <all>: [a&b.json](a&b.json).\n"


def test_search_box_is_wide_enough_for_its_placeholder():
    """The samples search box is at least as many `ch` wide as its placeholder has characters (it was 18em: the
    placeholder was cut). A ch, the width of "0", is wider than the average letter, space or comma of a font."""
    page = to_html([samples([sample(0, "correct")], "samples.jsonl", 10)], "E")
    placeholder = re.search(r'<input type="search" placeholder="([^"]+)"', page).group(1)
    width = re.search(r"\.filters input\[type=search\]\{min-width:(\d+)ch", page)
    assert width and int(width.group(1)) >= len(placeholder), (placeholder, width)
