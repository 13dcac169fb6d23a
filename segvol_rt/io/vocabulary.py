"""Target names SegVol was trained on, for text prompts and the embedding table.

SegVol's labelled data (BTCV, AbdomenCT-1K, AMOS22, FLARE22, WORD, CHAOS,
TotalSegmentator, MSD, KiTS19/23, LiTS/3D-IRCADb, SLIVER07, CT-ORG, VerSe,
LUNA16, Pancreas-CT, HaN-Seg, ...) name their classes in plain English; the
text encoder saw ``"A computerized tomography of a {name}."``. Any text works as
a prompt, but these names are the ones the model learned, and the runtime
precomputes their text embeddings. All entries are already in
:func:`normalize_name` form.
"""

from __future__ import annotations

import re

_ABDOMEN = (
    "liver",
    "kidney",
    "left kidney",
    "right kidney",
    "spleen",
    "pancreas",
    "aorta",
    "inferior vena cava",
    "stomach",
    "gallbladder",
    "esophagus",
    "duodenum",
    "colon",
    "small bowel",
    "intestine",
    "rectum",
    "bladder",
    "urinary bladder",
    "prostate",
    "uterus",
    "adrenal gland",
    "left adrenal gland",
    "right adrenal gland",
    "portal vein and splenic vein",
    "hepatic vessel",
)

_LESIONS = (
    "liver tumor",
    "kidney tumor",
    "kidney cyst",
    "pancreas tumor",
    "hepatic vessel tumor",
    "colon cancer",
    "lung tumor",
    "lung nodule",
    "lesion",
)

_THORAX = (
    "lung",
    "left lung",
    "right lung",
    "left lung upper lobe",
    "left lung lower lobe",
    "right lung upper lobe",
    "right lung middle lobe",
    "right lung lower lobe",
    "trachea",
    "heart",
    "heart myocardium",
    "left heart atrium",
    "right heart atrium",
    "left heart ventricle",
    "right heart ventricle",
    "pulmonary artery",
)

_VESSELS = (
    "left iliac artery",
    "right iliac artery",
    "left iliac vena",
    "right iliac vena",
    "left common carotid artery",
    "right common carotid artery",
    "brachiocephalic trunk",
    "superior vena cava",
)

_SKELETON = (
    "vertebrae",
    "cervical vertebrae",
    "thoracic vertebrae",
    "lumbar vertebrae",
    "sacrum",
    "ribs",
    "left rib",
    "right rib",
    "sternum",
    "left clavicle",
    "right clavicle",
    "left scapula",
    "right scapula",
    "left humerus",
    "right humerus",
    "left femur",
    "right femur",
    "left femoral head",
    "right femoral head",
    "left hip",
    "right hip",
)

_MUSCLES_AND_OTHER = (
    "left gluteus maximus",
    "right gluteus maximus",
    "left gluteus medius",
    "right gluteus medius",
    "left iliopsoas",
    "right iliopsoas",
    "left autochthon",
    "right autochthon",
    "brain",
    "face",
    "spinal cord",
    "thyroid gland",
)

CATEGORIES: tuple[str, ...] = _ABDOMEN + _LESIONS + _THORAX + _VESSELS + _SKELETON + _MUSCLES_AND_OTHER

_SPACES = re.compile(r"\s+")


def normalize_name(text: str) -> str:
    """Lookup key of a target name: lowercase, trimmed, inner whitespace collapsed to one space."""
    return _SPACES.sub(" ", str(text)).strip().lower()


ALL_TARGETS = "all"


def expand_all(texts: list[str]) -> list[str]:
    """``--text all``: every name of :data:`CATEGORIES` (the names every export puts in
    its text table) in the place of ``all``; repeated names once."""
    if not any(t.lower() == ALL_TARGETS for t in texts):
        return texts
    out: list[str] = []
    for t in texts:
        out.extend(CATEGORIES if t.lower() == ALL_TARGETS else [t])
    return list(dict.fromkeys(out))
