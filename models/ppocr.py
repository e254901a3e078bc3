"""Synthetic data + exact rapidocr preprocessing for the PP-OCRv4 ONNX models.

The PyPI wheel ``rapidocr-onnxruntime==1.4.4`` ships three Paddle-exported
models (weights stored in Constant nodes):

* ``det``: ``ch_PP-OCRv4_det_infer.onnx``  DBNet detector, ``x`` [N,3,H,W] ->
  probability map [N,1,H,W];
* ``rec``: ``ch_PP-OCRv4_rec_infer.onnx``  SVTR-LCNet CTC recognizer,
  ``x`` [N,3,48,W] -> softmax [N,T,6625] (character list in metadata
  ``character``);
* ``cls``: ``ch_ppocr_mobile_v2.0_cls_infer.onnx``  0/180 degree direction
  classifier, ``x`` [N,3,48,192] -> [N,2].

Only the model files are used (``rapidocr_onnxruntime`` itself imports cv2, so
it is located with :func:`importlib.util.find_spec`, never imported).  This
module renders text lines with PIL and matplotlib's bundled DejaVu fonts and
reproduces rapidocr's preprocessing in numpy: images are RGB uint8 HxWx3 here
and are flipped to BGR (rapidocr/Paddle channel order) before normalisation;
``cv2.resize(INTER_LINEAR)`` is reimplemented by :func:`_resize_linear`
(equal to cv2 up to +-1 uint8 rounding).  No torch, no cv2.
"""
from __future__ import annotations

import importlib.util
import math
from functools import cache
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

INSTALL_HINT = "pip install --no-deps rapidocr-onnxruntime==1.4.4"
_MODEL_FILES = {
    "det": "ch_PP-OCRv4_det_infer.onnx",
    "rec": "ch_PP-OCRv4_rec_infer.onnx",
    "cls": "ch_ppocr_mobile_v2.0_cls_infer.onnx",
}
REC_SHAPE = (3, 48, 320)  # rapidocr config.yaml Rec.rec_img_shape
CLS_SHAPE = (3, 48, 192)  # rapidocr config.yaml Cls.cls_image_shape
DET_MEAN = np.array([0.5, 0.5, 0.5], np.float32)  # config.yaml Det.mean
DET_STD = np.array([0.5, 0.5, 0.5], np.float32)  # config.yaml Det.std

_WORDS = (
    "the of and to in is for on with by from data model text image line page "
    "price total order number date time name city water light green river "
    "school market energy system report office paper table window garden "
    "hello world open close north south summer winter coffee music travel "
    "account invoice amount street phone email value result address"
).split()
_PUNCT = ".,:-%/#"
# Common simplified Chinese characters (all present in the PP-OCRv4 dictionary).
_CJK = (
    "的一是不了人我在有他这中大来上们国到说时要就出会可也你对生能而子那得于着下自之年"
    "过发后作里用道行所然家种事成方多经么去法学如都同现没动起好小心前面天工本电开公"
)
_CJK_FONT_HINTS = (
    "notosanscjk", "notoserifcjk", "sourcehan", "wqy", "wenquanyi", "droidsansfallback",
    "uming", "ukai", "simhei", "simsun", "msyh", "yahei", "pingfang", "heiti", "fangsong",
)


# ----------------------------------------------------------------------------- models
def model_paths() -> dict[str, Path]:
    """Paths of the det/rec/cls ONNX files inside the installed rapidocr wheel."""
    spec = importlib.util.find_spec("rapidocr_onnxruntime")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError(
            f"rapidocr_onnxruntime is not installed; run `{INSTALL_HINT}`")
    root = Path(list(spec.submodule_search_locations)[0]) / "models"
    paths = {k: root / f for k, f in _MODEL_FILES.items()}
    missing = [str(p) for p in paths.values() if not p.is_file()]
    if missing:
        raise RuntimeError(f"missing PP-OCR models {missing}; run `{INSTALL_HINT}`")
    return paths


def characters_from_model(path: str | Path) -> list[str]:
    """The recognizer's character list (metadata ``character``, one per line)."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    meta = {p.key: p.value for p in model.metadata_props}
    if "character" not in meta:
        raise KeyError(f"{path} has no 'character' metadata")
    return meta["character"].splitlines()


def ctc_decode(probs: np.ndarray, characters: list[str]) -> list[str]:
    """Greedy CTC decode of [N,T,C] probabilities like rapidocr's CTCLabelDecode.

    ``characters`` is the raw model list; as in rapidocr, ``'blank'`` is inserted
    at index 0 and a space character appended at the end (use_space_char).
    Repeated indices are merged, then blanks (index 0) dropped.
    """
    table = ["blank", *characters, " "]
    idx = np.asarray(probs).argmax(axis=2)
    out = []
    for row in idx:
        keep = np.ones(len(row), bool)
        keep[1:] = row[1:] != row[:-1]
        keep &= row != 0
        out.append("".join(table[i] for i in row[keep]))
    return out


# ----------------------------------------------------------------------------- fonts
@cache
def _latin_fonts() -> tuple[str, ...]:
    import matplotlib

    d = Path(matplotlib.get_data_path()) / "fonts" / "ttf"
    names = ("DejaVuSans.ttf", "DejaVuSans-Bold.ttf", "DejaVuSerif.ttf", "DejaVuSansMono.ttf")
    fonts = tuple(str(d / n) for n in names if (d / n).is_file())
    if not fonts:
        from matplotlib import font_manager

        fonts = (font_manager.findfont("DejaVu Sans"),)
    return fonts


@cache
def _cjk_font() -> str | None:
    """A system font file with CJK glyphs, or None (then lines are ASCII only)."""
    from matplotlib import font_manager

    for f in sorted(font_manager.findSystemFonts()):
        if any(h in Path(f).name.lower().replace("-", "").replace("_", "") for h in _CJK_FONT_HINTS):
            try:
                font = ImageFont.truetype(f, 24)
                if font.getbbox("中")[2] > 8 and font.getmask("中").getbbox():
                    return f
            except OSError:
                continue
    return None


# ----------------------------------------------------------------------------- rendering
def _random_text(rng: np.random.Generator, cjk: bool) -> str:
    tokens = []
    for _ in range(int(rng.integers(1, 4))):
        r = rng.random()
        if cjk and r < 0.3:
            tokens.append("".join(rng.choice(list(_CJK), int(rng.integers(2, 5)))))
        elif r < 0.6:
            w = str(rng.choice(_WORDS))
            case = rng.random()
            tokens.append(w.upper() if case < 0.15 else w.capitalize() if case < 0.5 else w)
        elif r < 0.85:
            tokens.append(str(int(rng.integers(0, 10 ** int(rng.integers(1, 6))))))
        else:
            a, b = int(rng.integers(0, 1000)), int(rng.integers(0, 100))
            tokens.append(f"{a}{rng.choice(list(_PUNCT))}{b:02d}")
    return " ".join(tokens)


def _colors(rng: np.random.Generator) -> tuple[tuple[int, ...], tuple[int, ...]]:
    bg = tuple(int(v) for v in rng.integers(200, 256) - rng.integers(0, 20, 3))
    fg = tuple(int(v) for v in rng.integers(0, 60) + rng.integers(0, 20, 3))
    return bg, fg


def _add_noise(rng: np.random.Generator, img: np.ndarray, max_sigma: float = 6.0) -> np.ndarray:
    noise = rng.normal(0.0, rng.uniform(0.0, max_sigma), img.shape)
    return np.clip(img.astype(np.float32) + noise, 0, 255).astype(np.uint8)


def render_lines(n: int, seed: int = 0, cjk: bool | None = None,
                 max_aspect: float = REC_SHAPE[2] / REC_SHAPE[1]) -> list[tuple[str, np.ndarray]]:
    """``n`` random text-line crops as ``(text, RGB uint8 HxWx3)``, deterministic per seed.

    Dark text on a light (slightly tinted) background, DejaVu fonts of size
    18-36 px, small random margins, Gaussian noise.  Lines are shortened until
    width/height <= ``max_aspect`` (320/48, so rec inputs are never squeezed).
    ``cjk=None`` mixes in common Chinese characters iff a CJK system font exists.
    """
    rng = np.random.default_rng(seed)
    cjk_font = _cjk_font() if cjk is None or cjk else None
    if cjk and cjk_font is None:
        raise RuntimeError("cjk=True but no font with CJK glyphs was found")
    out: list[tuple[str, np.ndarray]] = []
    while len(out) < n:
        text = _random_text(rng, cjk_font is not None)
        has_cjk = any(c in _CJK for c in text)
        path = cjk_font if has_cjk else str(rng.choice(_latin_fonts()))
        font = ImageFont.truetype(path, int(rng.integers(18, 37)))
        x0, y0, x1, y1 = font.getbbox(text)
        px, py = int(rng.integers(3, 12)), int(rng.integers(2, 8))
        w, h = x1 - x0 + 2 * px, y1 - y0 + 2 * py
        if w > max_aspect * h:
            continue  # too long for a 48x320 input: draw another text
        bg, fg = _colors(rng)
        im = Image.new("RGB", (w, h), bg)
        ImageDraw.Draw(im).text((px - x0, py - y0), text, font=font, fill=fg)
        out.append((text, _add_noise(rng, np.asarray(im))))
    return out


def rotate180(images: list[np.ndarray]) -> list[np.ndarray]:
    """Rotate each HxWx3 image by 180 degrees (cls label 1)."""
    return [np.ascontiguousarray(im[::-1, ::-1]) for im in images]


# ----------------------------------------------------------------------------- preprocessing
def _resize_linear(img: np.ndarray, out_w: int, out_h: int) -> np.ndarray:
    """``cv2.resize(img, (out_w, out_h))`` (INTER_LINEAR, half-pixel centres) in numpy."""

    def taps(n_out: int, n_in: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        f = (np.arange(n_out) + 0.5) * (n_in / n_out) - 0.5
        i0 = np.floor(f).astype(np.int64)
        a = np.where(i0 < 0, 0.0, f - i0).astype(np.float32)
        i0 = np.clip(i0, 0, n_in - 1)
        return i0, np.minimum(i0 + 1, n_in - 1), a

    h, w = img.shape[:2]
    y0, y1, ay = taps(out_h, h)
    x0, x1, ax = taps(out_w, w)
    src = img.astype(np.float32)
    rows = src[y0] * (1 - ay)[:, None, None] + src[y1] * ay[:, None, None]
    out = rows[:, x0] * (1 - ax)[None, :, None] + rows[:, x1] * ax[None, :, None]
    return np.clip(np.rint(out), 0, 255).astype(np.uint8) if img.dtype == np.uint8 else out


def _resize_norm_pad(img: np.ndarray, shape: tuple[int, int, int]) -> np.ndarray:
    """rapidocr TextRecognizer/TextClassifier.resize_norm_img for one RGB image."""
    c, h_out, w_out = shape
    bgr = np.asarray(img)[..., ::-1]
    h, w = bgr.shape[:2]
    resized_w = min(w_out, int(math.ceil(h_out * w / float(h))))
    x = _resize_linear(bgr, resized_w, h_out).astype(np.float32).transpose(2, 0, 1) / 255
    x = (x - 0.5) / 0.5
    out = np.zeros((c, h_out, w_out), np.float32)
    out[:, :, :resized_w] = x
    return out


def rec_batch(images: list[np.ndarray]) -> np.ndarray:
    """[N,3,48,320] float32 recognizer input: keep aspect, height 48, (x/255-.5)/.5, zero right-pad.

    rapidocr widens a batch beyond 320 when a line's aspect exceeds 320/48;
    here the width is fixed at 320 (wider lines are squeezed, as in its cls).
    """
    return np.stack([_resize_norm_pad(im, REC_SHAPE) for im in images])


def cls_batch(images: list[np.ndarray]) -> np.ndarray:
    """[N,3,48,192] float32 direction-classifier input (rapidocr TextClassifier)."""
    return np.stack([_resize_norm_pad(im, CLS_SHAPE) for im in images])


def det_preprocess(img: np.ndarray, limit_side_len: int | None = None) -> tuple[np.ndarray, float, float]:
    """rapidocr DetPreProcess for an RGB image -> ([1,3,H,W] float32, scale_y, scale_x).

    ``limit_side_len=None`` keeps the scale and only rounds H, W to multiples of
    32; an int applies rapidocr's ``limit_type: min`` rule (its default is 736:
    upscale so the short side reaches it).
    """
    h, w = img.shape[:2]
    ratio = 1.0
    if limit_side_len is not None and min(h, w) < limit_side_len:
        ratio = float(limit_side_len) / min(h, w)
    rh = max(32, int(round(int(h * ratio) / 32) * 32))
    rw = max(32, int(round(int(w * ratio) / 32) * 32))
    bgr = np.asarray(img)[..., ::-1]
    x = _resize_linear(bgr, rw, rh).astype(np.float32) / 255.0
    x = ((x - DET_MEAN) / DET_STD).transpose(2, 0, 1)[None]
    return np.ascontiguousarray(x, np.float32), rh / h, rw / w


def det_image(seed: int, size: tuple[int, int] = (320, 320), limit_side_len: int | None = None,
              cjk: bool | None = None) -> tuple[np.ndarray, np.ndarray]:
    """A synthetic page and its detector input.

    Renders 3-7 non-overlapping text lines (DejaVu, 14-30 px) at random positions on
    a light noisy ``size`` = (H, W) page.  Returns ``(x, boxes)``: ``x`` [1,3,H',W']
    float32 preprocessed by :func:`det_preprocess`, ``boxes`` int [K,4] tight
    ``(x0, y0, x1, y1)`` text boxes in the coordinates of ``x``.
    """
    rng = np.random.default_rng(10_000 + seed)
    cjk_font = _cjk_font() if cjk is None or cjk else None
    H, W = size
    bg, _ = _colors(rng)
    page = Image.new("RGB", (W, H), bg)
    draw = ImageDraw.Draw(page)
    boxes: list[tuple[int, int, int, int]] = []
    want = int(rng.integers(3, 8))
    for _ in range(60):
        if len(boxes) == want:
            break
        text = _random_text(rng, cjk_font is not None)
        path = cjk_font if any(c in _CJK for c in text) else str(rng.choice(_latin_fonts()))
        font = ImageFont.truetype(path, int(rng.integers(14, 31)))
        bx0, by0, bx1, by1 = font.getbbox(text)
        tw, th = bx1 - bx0, by1 - by0
        if tw > W - 8 or th > H - 8:
            continue
        x, y = int(rng.integers(4, W - tw - 3)), int(rng.integers(4, H - th - 3))
        box = (x, y, x + tw, y + th)
        if any(box[0] < b[2] + 6 and b[0] < box[2] + 6 and box[1] < b[3] + 6 and b[1] < box[3] + 6
               for b in boxes):
            continue
        _, fg = _colors(rng)
        draw.text((x - bx0, y - by0), text, font=font, fill=fg)
        boxes.append(box)
    img = _add_noise(rng, np.asarray(page), 4.0)
    x, sy, sx = det_preprocess(img, limit_side_len)
    b = np.array(boxes, np.float64).reshape(-1, 4) * [sx, sy, sx, sy]
    return x, np.rint(b).astype(np.int64)


# ----------------------------------------------------------------------------- calibration
def calibration(kind: str, n: int, seed: int = 0) -> dict[str, np.ndarray]:
    """Calibration samples ``{'x': [n,...] float32}`` for ``kind`` in det/rec/cls.

    * ``rec``: ``rec_batch(render_lines(n, seed))`` [n,3,48,320];
    * ``cls``: lines with every other one rotated by 180 degrees, [n,3,48,192],
      plus ``labels`` int64 (0 upright, 1 rotated);
    * ``det``: ``det_image(seed + i)`` at the fixed size 320x320, [n,3,320,320].
    """
    if kind == "rec":
        return {"x": rec_batch([im for _, im in render_lines(n, seed)])}
    if kind == "cls":
        labels = np.arange(n, dtype=np.int64) % 2
        ims = [im for _, im in render_lines(n, seed)]
        ims = [rotate180([im])[0] if lab else im for im, lab in zip(ims, labels)]
        return {"x": cls_batch(ims), "labels": labels}
    if kind == "det":
        return {"x": np.concatenate([det_image(seed + i, (320, 320))[0] for i in range(n)])}
    raise ValueError(f"unknown kind {kind!r}; expected 'det', 'rec' or 'cls'")
