"""User prompt parsing/validation, decoder token layout and the official
window prompt rules (checked against the torch reference's versions)."""

from __future__ import annotations

import numpy as np
import pytest

from segvol_rt.errors import SegVolError
from segvol_rt.io import spec as S
from segvol_rt.pipeline import prompts as P


def test_parse_box_and_points():
    assert P.parse_box("1,2,3,4,5,6") == (1, 2, 3, 4, 5, 6)
    assert P.parse_box([0, 0, 0, 0, 0, 0]) == (0,) * 6
    pts = P.parse_points("1,2,3;4,5,6,0")
    assert pts.coords.tolist() == [[1, 2, 3], [4, 5, 6]]
    assert pts.labels.tolist() == [1, 0]
    assert P.parse_points([(1, 2, 3, 1)]).labels.tolist() == [1]


@pytest.mark.parametrize(
    "bad",
    ["1,2,3", "a,b,c,d,e,f", "5,0,0,4,1,1"],
)
def test_parse_box_errors(bad):
    with pytest.raises(SegVolError):
        P.parse_box(bad)


@pytest.mark.parametrize("bad", ["1,2", "1,2,3,7", "", "x,1,2"])
def test_parse_points_errors(bad):
    with pytest.raises(SegVolError):
        P.parse_points(bad)


def test_validate_prompts():
    shape = (10, 20, 30)
    P.validate_prompts(shape, "liver", None, None)
    P.validate_prompts(shape, None, (0, 0, 0, 9, 19, 29), None)
    with pytest.raises(SegVolError, match="at least one prompt"):
        P.validate_prompts(shape, None, None, None)
    with pytest.raises(SegVolError, match="outside"):
        P.validate_prompts(shape, None, (0, 0, 0, 10, 19, 29), None)
    with pytest.raises(SegVolError, match="outside"):
        P.validate_prompts(shape, None, None, P.parse_points("0,0,30"))
    with pytest.raises(SegVolError, match="empty"):
        P.validate_prompts(shape, "  ", None, None)
    with pytest.raises(SegVolError, match="at most"):
        P.validate_prompts(shape, None, None, P.parse_points(";".join(["1,1,1"] * 5)), max_points=4)


def test_decoder_tokens_official_order():
    pts = P.Points([[1, 2, 3]], [1])
    box = (1, 2, 3, 4, 5, 6)
    coords, labels = P.decoder_tokens(pts, None, True)
    assert labels.tolist() == [1, S.LABEL_PAD, S.LABEL_TEXT]
    coords, labels = P.decoder_tokens(pts, box, True)
    assert labels.tolist() == [1, S.LABEL_BOX_MIN, S.LABEL_BOX_MAX, S.LABEL_TEXT]
    assert coords[1].tolist() == [1, 2, 3] and coords[2].tolist() == [4, 5, 6]
    assert coords.dtype == np.float32 and labels.dtype == np.int32
    _, labels = P.decoder_tokens(None, None, True)
    assert labels.tolist() == [S.LABEL_TEXT]
    with pytest.raises(SegVolError):
        P.decoder_tokens(None, None, False)


def test_decoder_tokens_match_model_prompt_tokens():
    torch = pytest.importorskip("torch")
    from segvol_rt.export.model.segvol import prompt_tokens

    pts = P.Points([[1, 2, 3], [4, 5, 6]], [1, 0])
    box = (1, 2, 3, 4, 5, 6)
    for p, b, t in [(pts, None, False), (pts, box, True), (None, box, False), (None, None, True), (pts, None, True)]:
        coords, labels = P.decoder_tokens(p, b, t)
        tc, tl = prompt_tokens(
            1,
            torch.zeros(1, 8) if t else None,
            None if b is None else torch.tensor([b], dtype=torch.float32),
            None if p is None else (torch.tensor(p.coords[None]).float(), torch.tensor(p.labels[None])),
        )
        assert labels.tolist() == tl[0].tolist()
        keep = labels >= 0  # pad/text coordinates are ignored by the graph
        assert np.array_equal(coords[keep & (labels != S.LABEL_TEXT)], tc[0].numpy()[keep & (labels != S.LABEL_TEXT)])


def test_generate_box_matches_reference():
    torch = pytest.importorskip("torch")
    from segvol_rt.export.reference.official import box_of

    rng = np.random.default_rng(0)
    for _ in range(5):
        m = (rng.random((6, 7, 8)) > 0.97).astype(np.uint8)
        assert P.generate_box(m) == tuple(box_of(torch.from_numpy(m)).tolist())
    assert P.generate_box(np.zeros((3, 3, 3))) == P.EMPTY_BOX


def test_select_points_protocol_matches_reference():
    torch = pytest.importorskip("torch")
    from segvol_rt.export.reference.official import choose_points

    m = np.zeros((5, 6, 7), np.float32)
    for n_pos in (0, 1, 3, 9):
        m[:] = 0
        m.reshape(-1)[:: max(1, 210 // max(n_pos, 1))][:n_pos] = 1
        ours = P.select_points(m, np.random.default_rng(7))
        ref_c, ref_l = choose_points(torch.from_numpy(m), np.random.default_rng(7))
        assert ours.coords.tolist() == ref_c.long().tolist()
        assert ours.labels.tolist() == ref_l.long().tolist()
        assert len(ours) == (1 if n_pos == 0 else 5)
        assert (ours.labels == 1).sum() == min(n_pos, 1) + min(n_pos, 4)


def test_binary_maps():
    cube = P.binary_cube((1, 2, 3, 2, 2, 5), (4, 4, 8))
    assert cube.sum() == 2 * 1 * 3 and cube[1, 2, 3] == 1 and cube[2, 2, 5] == 1
    assert P.binary_cube(P.EMPTY_BOX, (3, 3, 3)).sum() == 0
    pm = P.binary_points(P.Points([[0, 1, 2], [3, 3, 3]], [1, 0]), (4, 4, 4))
    assert pm.sum() == 1 and pm[0, 1, 2] == 1
