"""``segvol-rt targets``: the names the text table knows, with the DICOM SEG codes.

The names are those every export puts in its text table
(:data:`segvol_rt.io.vocabulary.CATEGORIES`), or with ``artifacts`` the
table of that artifacts directory: a ``--text`` that is one of them (case and
spacing aside) skips the text encoder. Each comes with the SNOMED CT codes
and the display colour the DICOM SEG writer gives its segment
(:func:`segvol_rt.io.dicom_seg.segment_code`, from ``io/snomed_segments.csv``).
"""

from __future__ import annotations

from typing import Any

from segvol_rt.errors import SegVolError

LINE = 80  # columns of the printed table


def target_rows(artifacts: str | None = None) -> list[dict[str, Any]]:
    """One dict per known name: name, SNOMED CT type (code, meaning), modifier, region, category, RGB."""
    from segvol_rt.io.dicom_seg import segment_code

    rows = []
    for name in known_names(artifacts):
        code = segment_code(name)
        rows.append({
            "name": name, "type": list(code.type), "modifier": list(code.modifier) if code.modifier else None,
            "region": list(code.region) if code.region else None, "category": list(code.category),
            "rgb": list(code.rgb), "coded": code.in_table,
        })
    return rows


def known_names(artifacts: str | None) -> list[str]:
    if artifacts is None:
        from segvol_rt.io.vocabulary import CATEGORIES

        return list(CATEGORIES)
    from segvol_rt.io.artifacts import Artifacts

    arts = Artifacts.load(artifacts)
    if not arts.has_text_table:
        raise SegVolError(f"{artifacts} has no text table: every --text goes through the text encoder")
    return [str(n) for n in arts.text_table()[0]]


def table_lines(rows: list[dict[str, Any]]) -> list[str]:
    """A plain table that fits 80 columns: name, SNOMED CT code (type, and modifier), colour."""
    width = max([len("name"), *(len(r["name"]) for r in rows)])
    lines = [f"{'name'.ljust(width)}  {'SNOMED CT':<18}  colour   meaning"]
    for r in rows:
        code = r["type"][0] + (f"+{r['modifier'][0]}" if r["modifier"] else "")
        meaning = r["type"][1] + (f", {r['modifier'][1]}" if r["modifier"] else "")
        colour = "#{:02x}{:02x}{:02x}".format(*r["rgb"])
        line = f"{r['name'].ljust(width)}  {code:<18}  {colour}  {meaning}"
        lines.append(line if len(line) <= LINE else line[: LINE - 3] + "...")
    return lines
