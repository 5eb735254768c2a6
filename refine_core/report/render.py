"""Write the report of a run directory: OUT/report/report.md (figures as files beside it) and
OUT/report/report.html (self-contained: figures embedded as base64 data URIs, inline CSS, no
external assets or links, so the file can be mailed or archived alone)."""
from __future__ import annotations

import base64
import html
import time
from pathlib import Path
from typing import Any, Sequence

from refine_core.report.blocks import Code, Example, Figure, Section, Table, Text
from refine_core.report.closed_loop_section import closed_loop_sections
from refine_core.report.retention_section import retention_sections
from refine_core.report.sections import (attention_section, config_section, data_section, evaluation_section,
    examples_section, load_config, training_section)

REPORT_DIR = "report"
STYLE = """
body { font-family: system-ui, sans-serif; max-width: 1100px; margin: 2em auto; padding: 0 1em; color: #222; }
h1 { border-bottom: 2px solid #444; } h2 { margin-top: 2em; border-bottom: 1px solid #ccc; }
table { border-collapse: collapse; margin: 0.8em 0; } td, th { border: 1px solid #ccc; padding: 0.3em 0.7em; }
th { background: #f2f2f2; text-align: left; } pre { background: #f7f7f7; padding: 0.8em; overflow-x: auto; }
figure { margin: 1em 0; } figure img { max-width: 100%; } figcaption { color: #555; font-size: 0.9em; }
.missing { color: #a33; font-style: italic; }
.example { display: flex; gap: 1em; margin: 1em 0; align-items: flex-start; }
.example img { width: 224px; image-rendering: auto; border: 1px solid #ccc; }
.example dl { margin: 0; } .example dt { font-weight: bold; margin-top: 0.4em; }
.example dd { margin: 0; white-space: pre-wrap; font-family: ui-monospace, monospace; font-size: 0.85em; }
"""


def build_report(run_dir: str | Path, attention_episodes: int = 3, registry: Any = None) -> Path:
    """(Re)build OUT/report from the run's stages; returns the path of report.html."""
    from refine_core.registry import get_registry

    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        from refine_core.errors import UsageError

        raise UsageError(f"Run directory {run_dir} does not exist; pass the --out of a `refine run`")
    registry = registry or get_registry()
    report_dir = run_dir / REPORT_DIR
    report_dir.mkdir(parents=True, exist_ok=True)
    for stale in report_dir.glob("*.png"):  # figures of a stage that is gone must not linger
        stale.unlink()
    config = load_config(run_dir)
    from refine_core.report.answer_section import answer_section
    from refine_core.report.attention_objects import attention_object_numbers

    sections = [
        # the answer first; the attention measurement is shared with the Attention maps section
        answer_section(run_dir, attention_object_numbers(run_dir, registry, attention_episodes)),
        config_section(run_dir, config),
        data_section(run_dir, config),
        training_section(run_dir, report_dir),
        evaluation_section(run_dir),
        *closed_loop_sections(run_dir, report_dir),  # one per OUT/eval/<benchmark>/ that ran
        *retention_sections(run_dir),
        attention_section(run_dir, report_dir, attention_episodes, registry),
        examples_section(run_dir, report_dir, config, registry),
    ]
    title = f"refine run report: {run_dir.resolve().name}"
    stamp = time.strftime("%Y-%m-%d %H:%M:%S")
    (report_dir / "report.md").write_text(to_markdown(title, stamp, sections))
    html_path = report_dir / "report.html"
    html_path.write_text(to_html(title, stamp, sections))
    return html_path


# -- Markdown ------------------------------------------------------------------------------------
def _md_escape(value: Any) -> str:
    return str(value).replace("|", "\\|").replace("\n", " ")


def _md_table(table: Table) -> list[str]:
    lines = ["| " + " | ".join(_md_escape(c) for c in table.columns) + " |",
             "|" + "---|" * len(table.columns)]
    lines += ["| " + " | ".join(_md_escape(v) for v in row) + " |" for row in table.rows]
    return lines + [""]


def to_markdown(title: str, stamp: str, sections: Sequence[Section]) -> str:
    lines = [f"# {title}", "", f"Generated {stamp}.", ""]
    for section in sections:
        lines += [f"## {section.title}", ""]
        for block in section.blocks:
            if isinstance(block, Text):
                lines += [f"*{block.text}*" if section.missing else block.text, ""]
            elif isinstance(block, Code):
                lines += ["```yaml", block.text, "```", ""]
            elif isinstance(block, Table):
                lines += _md_table(block)
            elif isinstance(block, Figure):
                lines += [f"![{block.path.stem.replace('_', ' ')}]({block.path.name})", "",
                          f"*{block.caption}*", ""]
            elif isinstance(block, Example):
                lines += [f"### {block.title}", ""]
                if block.image is not None:
                    lines += [f"![frame {block.title}]({block.image.name})", ""]
                for label, text in block.texts:
                    lines += [f"**{label}:**", "", "> " + text.replace("\n", "\n> "), ""]
    return "\n".join(lines)


# -- HTML ----------------------------------------------------------------------------------------
def _data_uri(path: Path) -> str:
    return "data:image/png;base64," + base64.b64encode(path.read_bytes()).decode("ascii")


def _html_table(table: Table) -> str:
    head = "".join(f"<th>{html.escape(str(c))}</th>" for c in table.columns)
    body = "".join(
        "<tr>" + "".join(f"<td>{html.escape(str(v))}</td>" for v in row) + "</tr>" for row in table.rows
    )
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _html_block(block: Any, missing: bool) -> str:
    if isinstance(block, Text):
        return (
            f'<p class="missing">{html.escape(block.text)}</p>'
            if missing
            else f"<p>{html.escape(block.text)}</p>"
        )
    if isinstance(block, Code):
        return f"<pre>{html.escape(block.text)}</pre>"
    if isinstance(block, Table):
        return _html_table(block)
    if isinstance(block, Figure):
        return (f'<figure><img src="{_data_uri(block.path)}" alt="{html.escape(block.path.stem)}">'
                f"<figcaption>{html.escape(block.caption)}</figcaption></figure>")
    if isinstance(block, Example):
        image = (f'<img src="{_data_uri(block.image)}" alt="frame {html.escape(block.title)}">'
                 if block.image is not None else "")
        texts = "".join(
            f"<dt>{html.escape(label)}</dt><dd>{html.escape(text)}</dd>" for label, text in block.texts
        )
        title = html.escape(block.title)
        return f'<div class="example">{image}<div><h3>{title}</h3><dl>{texts}</dl></div></div>'
    raise TypeError(f"unknown report block {type(block).__name__}")


def to_html(title: str, stamp: str, sections: Sequence[Section]) -> str:
    parts = ["<!DOCTYPE html><html lang=\"en\"><head><meta "
             f"charset=\"utf-8\"><title>{html.escape(title)}</title>",
             f"<style>{STYLE}</style></head><body><h1>{html.escape(title)}</h1><p>Generated "
             f"{html.escape(stamp)}.</p>"]
    for section in sections:
        parts.append(f"<section><h2>{html.escape(section.title)}</h2>")
        parts += [_html_block(block, section.missing) for block in section.blocks]
        parts.append("</section>")
    parts.append("</body></html>\n")
    return "\n".join(parts)
