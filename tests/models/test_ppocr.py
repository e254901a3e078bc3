"""Sanity of models/ppocr.py: synthetic data + preprocessing drive the original PP-OCRv4 models.

Skipped unless ``pip install --no-deps rapidocr-onnxruntime==1.4.4`` is installed
(only its model files are used; the package itself imports cv2, so it is located
with importlib rather than imported).
"""
import numpy as np
import pytest

pytest.importorskip("matplotlib")
ort = pytest.importorskip("onnxruntime")
from models import ppocr  # noqa: E402  (tests/conftest.py puts the repository root on sys.path)

try:
    PATHS = ppocr.model_paths()
except RuntimeError as e:  # rapidocr_onnxruntime not installed
    pytest.skip(str(e), allow_module_level=True)


@pytest.fixture(scope="module")
def sessions():
    return {k: ort.InferenceSession(str(p), providers=["CPUExecutionProvider"]) for k, p in PATHS.items()}


def test_render_and_batches_are_deterministic():
    a, b = ppocr.render_lines(4, seed=3), ppocr.render_lines(4, seed=3)
    assert [t for t, _ in a] == [t for t, _ in b]
    assert all(np.array_equal(x, y) and x.dtype == np.uint8 and x.ndim == 3 for (_, x), (_, y) in zip(a, b))
    ims = [im for _, im in a]
    r, c = ppocr.rec_batch(ims), ppocr.cls_batch(ims)
    assert r.shape == (4, 3, 48, 320) and r.dtype == np.float32 and -1 <= r.min() and r.max() <= 1
    assert c.shape == (4, 3, 48, 192) and c.dtype == np.float32
    cal = ppocr.calibration("cls", 6, seed=1)
    assert cal["x"].shape == (6, 3, 48, 192) and cal["labels"].tolist() == [0, 1] * 3
    assert ppocr.calibration("det", 2, seed=0)["x"].shape == (2, 3, 320, 320)


def test_ctc_decode_rules():
    chars = ["a", "b"]  # table: 0 blank, 1 a, 2 b, 3 space
    idx = np.array([[1, 1, 0, 1, 2, 2, 3, 0, 2]])
    probs = np.eye(4, dtype=np.float32)[idx]
    assert ppocr.ctc_decode(probs, chars) == ["aab b"]


def test_rec_recognizes_rendered_lines(sessions):
    lines = ppocr.render_lines(32, seed=0)
    probs = sessions["rec"].run(None, {"x": ppocr.rec_batch([im for _, im in lines])})[0]
    assert probs.shape[0] == 32 and probs.shape[2] == 6625
    decoded = ppocr.ctc_decode(probs, ppocr.characters_from_model(PATHS["rec"]))
    # The model adds spaces for the crop margins; compare up to leading/trailing whitespace.
    exact = np.mean([d.strip() == t for (t, _), d in zip(lines, decoded)])
    assert exact >= 0.8, (exact, decoded)  # measured 0.906 (29/32)


def test_cls_separates_upright_and_rotated(sessions):
    ims = [im for _, im in ppocr.render_lines(32, seed=0)]
    x = ppocr.cls_batch(ims + ppocr.rotate180(ims))
    labels = np.r_[np.zeros(32), np.ones(32)]
    acc = np.mean(sessions["cls"].run(None, {"x": x})[0].argmax(1) == labels)
    assert acc >= 0.9, acc  # measured 0.984 (63/64)


def test_det_fires_inside_boxes(sessions):
    for seed in range(2):
        x, boxes = ppocr.det_image(seed)
        assert x.shape == (1, 3, 320, 320) and len(boxes) >= 3
        prob = sessions["det"].run(None, {"x": x})[0][0, 0]
        mask = np.zeros(prob.shape, bool)
        for x0, y0, x1, y1 in boxes:
            mask[y0:y1, x0:x1] = True
        inside, outside = prob[mask].mean(), prob[~mask].mean()
        assert inside > 0.3 and outside < 0.05 and inside > 10 * outside, (inside, outside)
        # measured inside ~0.47-0.55, outside ~0
