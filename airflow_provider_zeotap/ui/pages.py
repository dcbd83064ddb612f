"""Server-rendered HTML of the Syncs page: no script, no framework, nothing fetched from elsewhere.

The page works offline and inside the Airflow UI's frame. Links to Airflow's own pages open in the top
window (``target="_top"``); every value from the metadata DB or a rejected-rows file is escaped.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import datetime
from html import escape
from urllib.parse import quote, urlencode

from airflow_provider_zeotap.ui.models import RejectedRowsPage, SyncDetail, SyncRun, SyncSummary

#: The chart's series: name, colour, and how to read the value from a run.
SERIES: tuple[tuple[str, str], ...] = (
    ("added", "#2f855a"),
    ("changed", "#2b6cb0"),
    ("removed", "#805ad5"),
    ("rejected", "#dd6b20"),
    ("failed", "#c53030"),
)

STYLE = """
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:16px;color:#1a202c;background:#fff}
h1{font-size:1.4rem;margin:0 0 12px}h2{font-size:1.1rem;margin:20px 0 8px}
table{border-collapse:collapse;width:100%;font-size:.85rem}th,td{border-bottom:1px solid #e2e8f0;padding:5px 8px;
text-align:left;vertical-align:top}th{background:#f7fafc;font-weight:600}td.n{text-align:right;font-variant-numeric:tabular-nums}
.badge{display:inline-block;border-radius:9px;padding:1px 8px;font-size:.75rem;font-weight:600}
.warn{background:#fed7d7;color:#9b2c2c}.ok{background:#c6f6d5;color:#22543d}.muted{color:#718096}
.note{background:#fefcbf;padding:6px 10px;border-radius:4px}dl{display:grid;grid-template-columns:max-content auto;
gap:4px 16px;font-size:.85rem}dt{color:#4a5568}dd{margin:0}code{font-size:.8rem}
form{margin:8px 0}input[type=search]{padding:4px 6px;width:260px}a{color:#2b6cb0}
"""


def index_page(syncs: Sequence[SyncSummary], base: str) -> str:
    rows = []
    for sync in syncs:
        last = sync.last_run
        rows.append(
            "<tr data-sync-id=\"{id}\">"
            "<td><a href=\"{href}\">{id}</a> {badge}</td><td>{dag}</td><td>{task}</td><td>{dest}</td><td>{target}</td>"
            "<td class=n>{rows}</td><td>{outcome}</td><td>{when}</td><td class=n data-field=rejected>{rejected}</td></tr>".format(
                id=escape(sync.sync_id),
                href=escape(f"{base}/page/{quote(sync.sync_id, safe='')}"),
                badge=_badge(sync.warning),
                dag=escape(sync.dag_id or "—"),
                task=escape(sync.task_id or "—"),
                dest=escape(" ".join(filter(None, [sync.destination, f"({sync.mode})" if sync.mode else None])) or "—"),
                target=escape(_target(sync.target)),
                rows=_num(sync.committed_rows),
                outcome=escape(last.outcome if last else "no run yet"),
                when=_time(last.end_date or last.start_date if last else None),
                rejected=_num(sync.rejected_last_run),
            )
        )
    body = (
        "<h1>Syncs</h1>"
        + (
            "<table id=syncs><thead><tr><th>sync_id</th><th>DAG</th><th>task</th><th>destination</th><th>target</th>"
            "<th>committed rows</th><th>last run</th><th>finished</th><th>rejected in last run</th></tr></thead><tbody>"
            + "".join(rows)
            + "</tbody></table>"
            if rows
            else "<p class=muted>No syncs in the DAGs you may read. A sync appears once a DAG with a "
            "SyncDiffOperator and a destination sync task is parsed.</p>"
        )
        + f"<p class=muted>JSON: <a href=\"{escape(base)}/syncs\">{escape(base)}/syncs</a></p>"
    )
    return _document("Syncs", body)


def sync_page(
    detail: SyncDetail, base: str, *, selected: SyncRun | None, rejected: RejectedRowsPage | None, chart_runs: int
) -> str:
    sync = detail.sync
    sid = quote(sync.sync_id, safe="")
    page_url = f"{base}/page/{sid}"
    parts = [
        f"<p><a href=\"{escape(base)}/\">← all syncs</a></p>",
        f"<h1>Sync <code>{escape(sync.sync_id)}</code> {_badge(sync.warning)}</h1>",
        "<dl id=about>",
        _dd("DAG and task", f"{sync.dag_id or '—'} / {sync.task_id or '—'}"),
        _dd("destination", " ".join(filter(None, [sync.destination, f"({sync.mode})" if sync.mode else None])) or "—"),
        _dd("target", _target(sync.target)),
        _dd("connection", sync.conn_id or "—"),
        _dd("committed rows", _num(sync.committed_rows)),
        _dd("committed at", _plain_time(sync.committed_at)),
        _dd("state location", sync.state_location or "—", code=True),
        "</dl>",
        f"<h2>Rows per run, last {len(detail.runs[:chart_runs])} runs</h2>",
        chart(list(reversed(detail.runs[:chart_runs]))),
        "<h2>Runs</h2>",
        _runs_table(detail.runs, page_url, selected),
    ]
    if selected is not None and rejected is not None:
        parts.append(_rejected_section(sync.sync_id, selected, rejected, page_url, base))
    parts += ["<h2>Guard settings</h2>", _settings(detail)]
    parts.append(
        f"<p class=muted>JSON: <a href=\"{escape(base)}/syncs/{escape(sid)}/runs\">{escape(base)}/syncs/{escape(sid)}/runs</a></p>"
    )
    return _document(f"Sync {sync.sync_id}", "".join(parts))


def chart(runs: Sequence[SyncRun], *, width: int = 900, height: int = 240) -> str:
    """Grouped bars: added, changed, removed, rejected and failed rows per run, oldest on the left.

    Each bar carries its run, series and value as data attributes and a tooltip, and its value is written
    above it, so a reader (or a test) sees the numbers, not only the heights.
    """
    if not runs:
        return "<p class=muted id=chart>No runs yet.</p>"
    values = [[value or 0 for value in _series_values(run)] for run in runs]
    top = max([1] + [v for row in values for v in row])
    left, bottom, plot_top = 40, 40, 24
    plot_h = height - bottom - plot_top
    group_w = (width - left - 10) / len(runs)
    bar_w = max(2.0, min(26.0, (group_w - 8) / len(SERIES)))
    out = [
        f"<svg id=chart role=img aria-label=\"rows per run\" width=\"{width}\" height=\"{height + 24}\" "
        f"viewBox=\"0 0 {width} {height + 24}\" xmlns=\"http://www.w3.org/2000/svg\" font-size=\"10\">",
        f"<line x1=\"{left}\" y1=\"{plot_top + plot_h}\" x2=\"{width - 10}\" y2=\"{plot_top + plot_h}\" stroke=\"#a0aec0\"/>",
        f"<text x=\"{left - 4}\" y=\"{plot_top + 4}\" text-anchor=\"end\">{top}</text>",
        f"<text x=\"{left - 4}\" y=\"{plot_top + plot_h}\" text-anchor=\"end\">0</text>",
    ]
    for index, (run, row) in enumerate(zip(runs, values)):
        x0 = left + index * group_w + (group_w - bar_w * len(SERIES)) / 2
        for s, ((name, colour), value) in enumerate(zip(SERIES, row)):
            h = plot_h * value / top
            x = x0 + s * bar_w
            y = plot_top + plot_h - h
            label = f"{run.run_id}: {value} {name}"
            out.append(
                f"<rect class=bar data-run=\"{escape(run.run_id)}\" data-series=\"{name}\" data-value=\"{value}\" "
                f"x=\"{x:.1f}\" y=\"{y:.1f}\" width=\"{bar_w - 1:.1f}\" height=\"{h:.1f}\" fill=\"{colour}\">"
                f"<title>{escape(label)}</title></rect>"
            )
            if value:
                out.append(
                    f"<text class=value x=\"{x + (bar_w - 1) / 2:.1f}\" y=\"{y - 2:.1f}\" text-anchor=\"middle\">{value}</text>"
                )
        when = run.run_after or run.start_date
        caption = when.strftime("%m-%d %H:%M") if when else run.run_id[:12]
        warn = " ⚠" if run.warning else ""
        out.append(
            f"<text x=\"{left + index * group_w + group_w / 2:.1f}\" y=\"{plot_top + plot_h + 14}\" "
            f"text-anchor=\"middle\">{escape(caption + warn)}</text>"
        )
    for s, (name, colour) in enumerate(SERIES):
        x = left + s * 90
        out.append(f"<rect x=\"{x}\" y=\"{height + 8}\" width=\"10\" height=\"10\" fill=\"{colour}\"/>")
        out.append(f"<text x=\"{x + 14}\" y=\"{height + 17}\">{name}</text>")
    out.append("</svg>")
    return "".join(out)


def _series_values(run: SyncRun) -> list[int | None]:
    plan = run.plan
    return [
        plan.added if plan else None,
        plan.changed if plan else None,
        plan.removed if plan else None,
        run.rejected,
        run.failed,
    ]


def _runs_table(runs: Sequence[SyncRun], page_url: str, selected: SyncRun | None) -> str:
    if not runs:
        return "<p class=muted>No runs yet.</p>"
    head = (
        "<table id=runs><thead><tr><th>run</th><th>task</th><th>outcome</th><th>started</th><th>finished</th>"
        "<th>added</th><th>changed</th><th>removed</th><th>succeeded</th><th>rejected</th><th>failed</th>"
        "<th>committed rows</th><th>rejected rows</th></tr></thead><tbody>"
    )
    rows = []
    for run in runs:
        bad = (run.rejected or 0) + (run.failed or 0)
        link = (
            f"<a href=\"{escape(page_url)}?{escape(urlencode({'run': run.run_id}))}#rejected\">show {bad}</a>"
            if run.has_rejected_rows else "—"
        )
        plan = run.plan
        rows.append(
            f"<tr data-run-id=\"{escape(run.run_id)}\"{' class=selected' if selected and selected.run_id == run.run_id else ''}>"
            f"<td><a target=_top href=\"{escape(run.task_instance_url)}\">{escape(run.run_id)}</a></td>"
            f"<td>{escape(run.dag_id)}.{escape(run.task_id)}</td>"
            f"<td>{escape(run.outcome)} {_badge(run.warning)}"
            + (f"<div class=muted>{escape(_cut(run.failure.message, 240))}</div>" if run.failure else "")
            + f"</td><td>{_time(run.start_date)}</td><td>{_time(run.end_date)}</td>"
            f"<td class=n>{_num(plan.added if plan else None)}</td><td class=n>{_num(plan.changed if plan else None)}</td>"
            f"<td class=n>{_num(plan.removed if plan else None)}</td><td class=n>{_num(run.succeeded)}</td>"
            f"<td class=n>{_num(run.rejected)}</td><td class=n>{_num(run.failed)}</td>"
            f"<td class=n>{_num(run.committed_rows)}</td><td>{link}</td></tr>"
        )
    return head + "".join(rows) + "</tbody></table>"


def _rejected_section(sync_id: str, run: SyncRun, page: RejectedRowsPage, page_url: str, base: str) -> str:
    run_q = {"run": run.run_id}
    parts = [
        f"<h2 id=rejected>Rejected rows of run <code>{escape(run.run_id)}</code></h2>",
        f"<form method=get action=\"{escape(page_url)}#rejected\"><input type=hidden name=run value=\"{escape(run.run_id)}\">"
        f"<input type=search name=search value=\"{escape(page.search)}\" placeholder=\"search key, operation or reason\">"
        " <button type=submit>Search</button></form>",
    ]
    if page.note:
        parts.append(f"<p class=note>{escape(page.note)}</p>")
    if page.rows:
        first = (page.page - 1) * page.page_size + 1
        parts.append(f"<p class=muted id=rejected-count>rows {first} to {first + len(page.rows) - 1} of {page.total}"
                     f"{' matching ' + escape(repr(page.search)) if page.search else ''}</p>")
        parts.append("<table id=rejected-rows><thead><tr><th>key</th><th>change</th><th>operation</th><th>outcome</th>"
                     "<th>reason</th></tr></thead><tbody>")
        for row in page.rows:
            key = ", ".join(f"{name}={value}" for name, value in row.key.items())
            parts.append(
                f"<tr><td><code>{escape(key)}</code></td><td>{escape(row.change or '')}</td>"
                f"<td>{escape(row.operation or '')}</td><td>{escape(row.outcome or '')}</td><td>{escape(row.reason or '')}</td></tr>"
            )
        parts.append("</tbody></table>")
        links = []
        for label, number in (("← previous", page.page - 1), ("next →", page.page + 1)):
            if 1 <= number and (number - 1) * page.page_size < page.total:
                query = urlencode({**run_q, "search": page.search, "page": number})
                links.append(f"<a href=\"{escape(page_url)}?{escape(query)}#rejected\">{label}</a>")
        parts.append("<p>" + " ".join(links) + "</p>")
    elif not page.note:
        parts.append(f"<p class=muted>No rejected rows{' match ' + escape(repr(page.search)) if page.search else ''}.</p>")
    api = f"{base}/syncs/{quote(sync_id, safe='')}/runs/{quote(run.run_id, safe='')}/rejected"
    parts.append(f"<p class=muted>JSON: <a href=\"{escape(api)}\">{escape(api)}</a></p>")
    return "".join(parts)


def _settings(detail: SyncDetail) -> str:
    s = detail.settings
    if s is None:
        return "<p class=muted>No run has recorded its settings yet.</p>"
    items: Iterable[tuple[str, object]] = (
        ("max_removals", s.max_removals),
        ("max_removal_ratio", s.max_removal_ratio),
        ("allow_empty_source", s.allow_empty_source),
        ("max_rejected_ratio", s.max_rejected_ratio),
        ("fail_on_rejected", s.fail_on_rejected),
        ("take_over_existing", s.take_over_existing),
        ("batch_size", s.batch_size),
        ("state_uri", s.state_uri),
    )
    return "<dl id=settings>" + "".join(_dd(name, "None" if value is None else str(value), code=True) for name, value in items) + "</dl>"


def _document(title: str, body: str) -> str:
    return (
        "<!doctype html><html lang=en><head><meta charset=utf-8>"
        f"<title>{escape(title)}</title><style>{STYLE}</style></head><body>{body}</body></html>"
    )


def _badge(warning: str | None) -> str:
    return f"<span class=\"badge warn\" title=\"{escape(warning)}\">⚠ {escape(warning)}</span>" if warning else ""


def _dd(name: str, value: str, *, code: bool = False) -> str:
    text = f"<code>{escape(value)}</code>" if code else escape(value)
    return f"<dt>{escape(name)}</dt><dd data-field=\"{escape(name)}\">{text}</dd>"


def _target(target: dict[str, str]) -> str:
    return ", ".join(f"{k}={v}" for k, v in sorted(target.items())) or "—"


def _num(value: int | None) -> str:
    return "—" if value is None else f"{value:,}"


def _time(value: datetime | None) -> str:
    return escape(_plain_time(value))


def _plain_time(value: datetime | None) -> str:
    return value.strftime("%Y-%m-%d %H:%M:%S UTC") if value else "—"


def _cut(text: str, width: int) -> str:
    return text if len(text) <= width else text[: width - 1] + "…"
