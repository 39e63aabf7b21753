"""docs/output.md cannot rot: every file the small demo run writes must match a documented path pattern, and every
column of its tables (Parquet, TSV, CSV) must be documented for that file, by name or by a `re:` pattern.

The markup this reads (described at the top of docs/output.md):
- a file: a level-3 heading holding only its path pattern in backticks, rooted at `results_dir/` or `data_dir/`,
  e.g. ### `results_dir/profiles/{feature_set}/scored.parquet`;
- placeholders: rows | `{name}` | `regex` | ... of the doc's placeholder table;
- columns: rows of a table in the file's section whose first cell starts with a backticked column name, or a
  backticked `re:REGEX` that must match whole column names.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.helpers import REPO

pytestmark = pytest.mark.slow  # walks the small demo's outputs

DOC = REPO / "docs" / "output.md"
ROOTS = ("results_dir", "data_dir")
TABLES = (".parquet", ".tsv", ".csv", ".csv.gz")
FILE_HEADING = re.compile(r"^###\s+`([^`]+)`\s*$")
ANY_HEADING = re.compile(r"^#{1,6}\s")
PLACEHOLDER_ROW = re.compile(r"^\|\s*`\{(\w+)\}`\s*\|\s*`([^`]+)`")
COLUMN_ROW = re.compile(r"^\|\s*`([^`]+)`")
RULE_MENTION = re.compile(r"^Rules?:\s*(.+)$", re.M)


@dataclass
class Section:
    pattern: str
    regex: re.Pattern | None = None
    names: set[str] = field(default_factory=set)
    patterns: list[re.Pattern] = field(default_factory=list)

    def documents(self, column: str) -> bool:
        return column in self.names or any(p.fullmatch(column) for p in self.patterns)


def parse_doc(text: str) -> list[Section]:
    # A pipe inside a table cell is written \| (Markdown), in regular expressions too.
    text = text.replace("\\|", "|")
    placeholders = {name: regex for name, regex in (PLACEHOLDER_ROW.match(line).groups()
                                                    for line in text.splitlines() if PLACEHOLDER_ROW.match(line))}
    sections: list[Section] = []
    current: Section | None = None
    for line in text.splitlines():
        heading = FILE_HEADING.match(line)
        if heading:
            current = Section(heading.group(1))
            sections.append(current)
            continue
        if ANY_HEADING.match(line):
            current = None
            continue
        row = COLUMN_ROW.match(line)
        if current is not None and row:
            cell = row.group(1)
            if cell.startswith("re:"):
                current.patterns.append(re.compile(cell[3:]))
            else:
                current.names.add(cell)
    for section in sections:
        section.regex = path_regex(section.pattern, placeholders)
    return sections


def path_regex(pattern: str, placeholders: dict[str, str]) -> re.Pattern:
    if not pattern.startswith(tuple(f"{root}/" for root in ROOTS)):
        raise AssertionError(f"docs/output.md: heading `{pattern}` must start with one of {ROOTS} and a slash")
    parts = []
    for literal, name in re.findall(r"([^{]*)(?:\{(\w+)\})?", pattern):
        parts.append(re.escape(literal))
        if name:
            if name not in placeholders:
                raise AssertionError(f"docs/output.md: `{pattern}` uses {{{name}}}, which its placeholder table "
                                     "does not define")
            parts.append(f"(?:{placeholders[name]})")
    return re.compile("".join(parts))


def rule_names(line: str) -> list[str]:
    """The rules a 'Rule:' line names: the backticked names it starts with, each maybe followed by a parenthesis,
    separated by commas or 'and' (e.g. "`replicate_retrieval` (replicate_retrieval.parquet), `matching` (...)")."""
    names, at = [], 0
    item = re.compile(r"\s*(?:,|and)?\s*`(\w+)`(?:\s*\([^)]*\))?")
    while match := item.match(line, at):
        names.append(match.group(1))
        at = match.end()
    return names


def table_columns(path: Path) -> list[str]:
    import pandas as pd
    import pyarrow.parquet as pq

    name = path.name
    if name.endswith(".parquet"):
        return list(pq.read_schema(path).names)
    if path.stat().st_size == 0:
        return []
    return list(pd.read_csv(path, sep="\t" if name.endswith(".tsv") else ",", nrows=0).columns)


def test_doc_parses_and_names_real_rules():
    text = DOC.read_text(encoding="utf-8")
    sections = parse_doc(text)
    assert len(sections) > 20, "docs/output.md: expected a ### `path` heading per output file"
    rules = set()
    for smk in [REPO / "Snakefile", *sorted((REPO / "workflow" / "rules").glob("*.smk"))]:
        rules |= set(re.findall(r"^rule (\w+):", smk.read_text(), re.M))
    named = {name for line in RULE_MENTION.findall(text) for name in rule_names(line)}
    assert named, "docs/output.md: no 'Rule: `name`' lines"
    unknown = sorted(named - rules - {"none"})
    assert not unknown, f"docs/output.md names rules the workflow does not have: {unknown}"
    undocumented = sorted(rules - named - {"all"})
    assert not undocumented, f"rules whose outputs docs/output.md does not describe (add a 'Rule:' line): {undocumented}"


def test_every_output_file_and_column_is_documented(small_demo_run):
    """Walks the small demo's results_dir and data_dir (also the files other tests add, e.g. reports/query/)."""
    _, results = small_demo_run
    sections = parse_doc(DOC.read_text(encoding="utf-8"))
    undocumented_files, undocumented_columns = [], []
    walked = 0
    for root, label in ((results, "results_dir"), (results.parent / "data", "data_dir")):
        for path in sorted(p for p in root.rglob("*") if p.is_file()):
            walked += 1
            relative = f"{label}/{path.relative_to(root).as_posix()}"
            matching = [s for s in sections if s.regex.fullmatch(relative)]
            if not matching:
                undocumented_files.append(relative)
                continue
            if not path.name.endswith(TABLES):
                continue
            missing = [c for c in table_columns(path) if not any(s.documents(c) for s in matching)]
            if missing:
                shown = ", ".join(missing[:15]) + (f" ... ({len(missing)} in all)" if len(missing) > 15 else "")
                undocumented_columns.append(f"{relative} (section {', '.join(f'`{s.pattern}`' for s in matching)}): "
                                            f"{shown}")
    assert walked > 100, f"the small demo wrote only {walked} files under {results} and its data folder"
    problems = []
    if undocumented_files:
        problems.append("files matching no `### \\`path\\`` heading of docs/output.md (document them there):\n  "
                        + "\n  ".join(undocumented_files))
    if undocumented_columns:
        problems.append("columns not documented in docs/output.md for their file (add a row with the column name or a "
                        "`re:` pattern to the file's table):\n  " + "\n  ".join(undocumented_columns))
    assert not problems, "\n".join(problems)
