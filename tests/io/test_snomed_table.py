"""The shipped SNOMED CT segment table (segvol_rt/io/snomed_segments.csv): a row
for every name of the text table, codes checked against pydicom's SCT
dictionary (the one highdicom's ``codes.SCT`` uses) where it has them, and a
free phrase never gets another organ's code."""

from __future__ import annotations

import pytest

pytest.importorskip("pydicom")

from segvol_rt.io.dicom_seg import TISSUE, segment_code, segment_table  # noqa: E402
from segvol_rt.io.vocabulary import CATEGORIES  # noqa: E402

# Codes of the table that pydicom's dictionary (DICOM part 16 context groups) lacks; from SNOMED CT itself.
NOT_IN_PYDICOM = {
    "113276009": "Intestinal structure",
    "181674001": "Gluteus maximus muscle",
    "363346000": "Malignant neoplasm",
    "68455001": "Iliopsoas muscle",
    "74281007": "Myocardium",
    "78333006": "Gluteus medius muscle",
}
CATEGORY_CODES = {"91723000", "85756007", "49755003"}  # Anatomical Structure, Tissue, Morphologically Abnormal Structure


def _pydicom_sct() -> dict[str, set[str]]:
    from pydicom.sr._concepts_dict import concepts

    out: dict[str, set[str]] = {}
    for entries in concepts["SCT"].values():
        for code, (meaning, _cids) in entries.items():
            out.setdefault(code, set()).add(meaning)
    return out


def test_every_text_table_name_has_a_row() -> None:
    table = segment_table()
    assert set(table) == set(CATEGORIES)


def test_codes_match_pydicom_where_it_has_them() -> None:
    known = _pydicom_sct()
    for name, row in segment_table().items():
        assert row.category[0] in CATEGORY_CODES, name
        for pair in (row.category, row.type, row.modifier, row.region):
            if pair is None:
                continue
            code, meaning = pair
            if code in NOT_IN_PYDICOM:
                assert meaning == NOT_IN_PYDICOM[code], name
            else:
                assert meaning in known.get(code, set()), (name, pair, known.get(code))
        assert all(0 <= c <= 255 for c in row.rgb) and len(row.rgb) == 3


def test_laterality_modifiers() -> None:
    table = segment_table()
    for name, row in table.items():
        if name.startswith("left ") and row.modifier is not None:
            assert row.modifier == ("7771000", "Left")
        if name.startswith("right ") and row.modifier is not None:
            assert row.modifier == ("24028007", "Right")
    assert table["left kidney"].type == table["kidney"].type
    assert table["left kidney"].modifier == ("7771000", "Left") and table["kidney"].modifier is None


def test_free_phrase_gets_a_generic_code_and_its_own_label() -> None:
    code = segment_code("  the Dark Spot near the liver ")
    assert code.category == code.type == TISSUE and not code.in_table
    assert code.label == "the Dark Spot near the liver" and code.region is None
    assert segment_code("Left  Kidney").in_table  # normalised lookup
