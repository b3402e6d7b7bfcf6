"""MkDocs hook: the machine-written experiment records rendered as tables.

The measuring scripts write one JSON record each into ``docs/experiments/records/``
(``lightning_curate.experiments.records.write_record``): ``name``, ``date``,
``version``, ``command``, ``machine`` (``platform``, ``cpu``, ``cores``, ``torch``,
``device``) and ``figures``. This hook replaces the marker ``<!-- records -->`` in
``docs/experiments/records.md`` with a summary table of every record and one
section per record with its figures, so a figure quoted anywhere in the docs links
to the single place it lives. A record that does not have that shape fails the
build with a message naming its file and the missing or wrong field.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import griffe
from markdown.extensions.toc import slugify

__all__ = ["MARKER", "RECORDS_PAGE", "ExampleSections", "load_records", "on_page_markdown", "render_records"]

MARKER = "<!-- records -->"
RECORDS_PAGE = "experiments/records.md"
RECORDS_DIR = "experiments/records"
FIELDS = {"name": str, "date": str, "version": str, "command": str, "machine": dict, "figures": dict}
MACHINE_FIELDS = ("platform", "cpu", "cores", "torch", "device")


class RecordError(ValueError):
    """A record file that is not a record: the message names the file and the field."""


def load_records(folder: Path) -> list[dict[str, Any]]:
    """Every ``*.json`` record in ``folder``, checked, newest first (then by name).

    Args:
        folder: the records folder; a missing folder holds no records.

    Returns:
        The records, each with ``_file`` set to its file name.

    Raises:
        RecordError: a file that is not valid JSON or lacks a field of the format.
    """
    records = []
    for path in sorted(folder.glob("*.json")) if folder.is_dir() else []:
        try:
            record = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as err:
            raise RecordError(f"{path}: not a readable JSON record ({err})") from err
        if not isinstance(record, dict):
            raise RecordError(f"{path}: expected a JSON object, got {type(record).__name__}")
        for field, kind in FIELDS.items():
            if not isinstance(record.get(field), kind):
                raise RecordError(f"{path}: field {field!r} must be a {kind.__name__}, got {record.get(field)!r}")
        missing = [key for key in MACHINE_FIELDS if key not in record["machine"]]
        if missing:
            raise RecordError(f"{path}: machine lacks {', '.join(missing)}")
        record["_file"] = path.name
        records.append(record)
    records.sort(key=lambda r: r["name"])
    records.sort(key=lambda r: r["date"], reverse=True)
    return records


def _cell(value: Any) -> str:
    """A value as one Markdown table cell (pipes escaped, lists joined)."""
    if isinstance(value, float):
        text = f"{value:.6g}"
    elif isinstance(value, list | tuple):
        text = ", ".join(_cell(v) for v in value)
    elif value is None:
        text = "-"
    else:
        text = str(value)
    return text.replace("|", "\\|").replace("\n", " ")


def _flatten(figures: dict[str, Any], prefix: str = "") -> list[tuple[str, Any]]:
    """Nested figures as (dotted key, value) rows, in the record's order."""
    rows: list[tuple[str, Any]] = []
    for key, value in figures.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            rows += _flatten(value, f"{name}.")
        else:
            rows.append((name, value))
    return rows


def render_records(records: list[dict[str, Any]]) -> str:
    """Markdown for ``records``: a summary table, then one section per record."""
    if not records:
        return "No machine-written record yet.\n"
    lines = ["| record | date | version | device | command |", "|---|---|---|---|---|"]
    for r in records:
        lines.append(f"| [{_cell(r['name'])}](#{_anchor(r['name'])}) | {_cell(r['date'])} | {_cell(r['version'])} "
                     f"| {_cell(r['machine']['device'])} | `{_cell(r['command'])}` |")
    for r in records:
        machine = r["machine"]
        lines += ["", f"## {r['name']}", "",
                  f"Recorded {r['date']} with lightning_curate {r['version']}, file "
                  f"[`{r['_file']}`](records/{r['_file']}).", "",
                  "```bash", r["command"], "```", "",
                  f"Machine: {_cell(machine['platform'])}; CPU {_cell(machine['cpu'])}, "
                  f"{_cell(machine['cores'])} cores; torch {_cell(machine['torch'])}; "
                  f"device {_cell(machine['device'])}.", "",
                  "| figure | value |", "|---|---|"]
        lines += [f"| `{_cell(key)}` | {_cell(value)} |" for key, value in _flatten(r["figures"])]
    return "\n".join(lines) + "\n"


def _anchor(name: str) -> str:
    """The id the toc extension gives the heading ``## name``."""
    return slugify(name, "-")


def on_page_markdown(markdown: str, page: Any, config: Any, files: Any) -> str:
    """MkDocs event: fill the records page's marker with the rendered records."""
    if page.file.src_uri != RECORDS_PAGE:
        return markdown
    if MARKER not in markdown:
        raise RecordError(f"docs/{RECORDS_PAGE} lost its marker {MARKER}")
    folder = Path(config["docs_dir"]) / RECORDS_DIR
    return markdown.replace(MARKER, render_records(load_records(folder)))


class ExampleSections(griffe.Extension):
    """Griffe extension: a Google ``Example:`` section is read as ``Examples:``.

    The package's docstrings head their doctests ``Example:``, which griffe's Google
    parser would render as a prose admonition (``>>>`` lines as text, ``x[0]`` as a
    broken link). Read as ``Examples:``, the doctests render as code.
    """

    SINGULAR = re.compile(r"^(\s*)Example:[ \t]*$", flags=re.M)

    def on_object(self, *, obj: Any, **kwargs: Any) -> None:
        docstring = obj.docstring
        if docstring is not None and "Example:" in docstring.value:
            docstring.value = self.SINGULAR.sub(r"\1Examples:", docstring.value)
