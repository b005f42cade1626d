"""Deterministic test/demo/benchmark videos made from the real material in ``tests/data``.

Every clip is a pure function of its arguments (seed included):

* ``real_clip``     a REAL clip: the carphone footage (pristine or crushed), the astronaut portrait or an LFW
                    portrait (``lfw000`` .. ``lfw099``; "Ken Burns" pan/zoom), placed into the target frame with a seed-dependent camera
                    (scale, crop/offset, flip, tilt, drift, hand-held jitter, letter/pillarbox), photometric
                    jitter (gamma, contrast, white balance, exposure drift), sensor noise and an H.264 CRF.
* ``fake_clip``     the SAME clip as ``real_clip`` with the same seed/source/size (same frames outside the
                    face), with the inner face manipulated in every frame by one of the recipes of
                    `corpora.fakes` (swap, blend, reenact, drift, retouch). Manipulations leave face-local
                    traces only: resampling blur, colour mismatch, feathered/Poisson blend boundary,
                    misalignment jitter, a wandering region, a locally degraded region.
* ``faceless_clip`` moving shapes over a panning gradient with noise (no face).
* ``broken_files``, ``demo_archive``, ``bench_archive``: sets of the above written to a folder.

Face boxes/landmarks come from MTCNN on the real material (`corpora.assets`) and are mapped through each clip's
camera transform (`corpora.plan`); ``face_boxes`` returns the ground-truth boxes. The manipulations are in
`corpora.fakes`, the encoder in `corpora.video`.
"""

from __future__ import annotations

import math
from pathlib import Path

import cv2
import numpy as np

from dfbatch.corpora.assets import PORTRAITS, SOURCES, assets_dir, detect_faces, identity
from dfbatch.corpora.fakes import METHODS, Faker, resolve_method
from dfbatch.corpora.plan import Plan, frame_count, seeded_rng
from dfbatch.corpora.video import truncated, write_video


# ------------------------------------------------------------------------------------- clips
def real_clip(path, *, seed: int = 0, size: tuple[int, int] = (640, 360), seconds: float = 4.0,
              fps: float = 30, source: str = "pristine") -> Path:
    """Write a REAL clip (H.264 unless the extension says otherwise) and return its path.

    ``source``: "pristine" / "distorted" carphone footage (offset, ping-pong looped to ``seconds``) or
    "astronaut" (slow pan/zoom over the still portrait). ``seed`` picks the camera/photometric/codec variation.
    """
    return Plan(seed, source, size, seconds, fps).write(path)


def face_boxes(*, seed: int = 0, size: tuple[int, int] = (640, 360), seconds: float = 4.0, fps: float = 30,
               source: str = "pristine") -> np.ndarray:
    """Ground-truth (n,4) face boxes of ``real_clip``/``fake_clip`` with the same arguments."""
    return Plan(seed, source, size, seconds, fps).boxes()


def fake_clip(path, *, seed: int = 0, size: tuple[int, int] = (640, 360), seconds: float = 4.0,
              fps: float = 30, source: str = "pristine", method: str | None = None,
              donors: frozenset[str] | None = None) -> Path:
    """Write a FAKE clip: ``real_clip`` with the same arguments, inner face manipulated in every frame.

    ``method``: one of ``METHODS`` (None: chosen by seed, see ``resolve_method``); ``donors``: the identities a
    swap may take its face from (None: any).
    """
    plan = Plan(seed, source, size, seconds, fps)
    return plan.write(path, Faker(plan, resolve_method(seed, source, method), donors))


# ---------------------------------------------------------------------------------- faceless clips
def _draw_shape(f: np.ndarray, kind: str, x: int, y: int, s: float, col: tuple, a: float) -> None:
    """Draw one shape of size ``s`` at (x, y) turned by ``a`` radians into ``f`` (anti-aliased)."""
    if kind == "circle":
        cv2.circle(f, (x, y), int(s), col, -1, cv2.LINE_AA)
    elif kind == "rect":
        box = cv2.boxPoints(((x, y), (2 * s, s), math.degrees(a)))
        cv2.fillConvexPoly(f, np.round(box).astype(np.int32), col, cv2.LINE_AA)
    elif kind == "poly":
        th = a + np.arange(3) * 2 * np.pi / 3
        tri = np.stack([x + s * np.cos(th), y + s * np.sin(th)], 1)
        cv2.fillConvexPoly(f, np.round(tri).astype(np.int32), col, cv2.LINE_AA)
    else:
        d = np.array([math.cos(a), math.sin(a)]) * s * 1.5
        cv2.line(f, (int(x - d[0]), int(y - d[1])), (int(x + d[0]), int(y + d[1])), col,
                 max(2, int(s / 6)), cv2.LINE_AA)


def faceless_clip(path, *, seed: int = 0, size: tuple[int, int] = (640, 360), seconds: float = 4.0,
                  fps: float = 30) -> Path:
    """Write a clip of moving shapes over a panning gradient with noise: no face anywhere."""
    W, H = int(size[0]), int(size[1])
    n = frame_count(seconds, fps)
    rng = seeded_rng(seed, "faceless")
    gy, gx = np.mgrid[0:2 * H, 0:2 * W].astype(np.float32)
    ang = rng.uniform(0, 2 * np.pi)
    g = (np.cos(ang) * gx + np.sin(ang) * gy) / (2 * max(W, H))
    c0, c1 = rng.uniform(30, 220, 3), rng.uniform(30, 220, 3)
    bg = (c0 + (c1 - c0) * (0.5 + 0.5 * np.sin(np.pi * g))[..., None]).astype(np.uint8)
    pan = np.stack([np.linspace(0, rng.uniform(0, W), n), np.linspace(0, rng.uniform(0, H), n)], 1).astype(int)
    k = int(rng.integers(3, 8))
    kinds = rng.choice(["circle", "rect", "poly", "line"], k)
    pos = rng.uniform([0, 0], [W, H], (k, 2))
    vel = rng.uniform(-1, 1, (k, 2)) * min(W, H) * rng.uniform(0.2, 0.8, (k, 1)) / fps
    sizes = rng.uniform(0.05, 0.25, k) * min(W, H)
    cols = rng.uniform(0, 255, (k, 3))
    spin = rng.uniform(-2, 2, k) / fps
    bank = np.round(rng.normal(0, rng.uniform(1, 4), (H + 16, W + 16, 3))).astype(np.int16)
    offs = rng.integers(0, 17, (n, 2))

    def frames():
        p = pos.copy()
        for t in range(n):
            f = bg[pan[t, 1]:pan[t, 1] + H, pan[t, 0]:pan[t, 0] + W].copy()
            for i in range(k):
                _draw_shape(f, kinds[i], int(p[i, 0]), int(p[i, 1]), sizes[i], tuple(float(v) for v in cols[i]),
                            spin[i] * t)
            p += vel
            for ax, D in ((0, W), (1, H)):  # bounce
                out = (p[:, ax] < 0) | (p[:, ax] > D)
                vel[out, ax] *= -1
                p[:, ax] = np.clip(p[:, ax], 0, D)
            dy, dx = offs[t]
            yield np.clip(f + bank[dy:dy + H, dx:dx + W], 0, 255).astype(np.uint8)

    return write_video(path, frames(), fps, crf=int(rng.integers(18, 29)))


# ----------------------------------------------------------------------------------- file sets
def broken_files(dir) -> dict[str, str]:
    """Write a few bad inputs into ``dir``; return {filename: expected status} (all ``failed``)."""
    d = Path(dir)
    d.mkdir(parents=True, exist_ok=True)
    (d / "empty.mp4").write_bytes(b"")
    (d / "text.mp4").write_text("this is not a video, just some text pretending to be one\n" * 4)
    from PIL import Image

    Image.fromarray(np.full((32, 48, 3), 127, np.uint8)).save(d / "png_named.mp4", format="PNG")
    truncated(d / "truncated.mp4", lambda tmp: faceless_clip(tmp, seed=1, size=(160, 120), seconds=1.0, fps=30))
    return {"empty.mp4": "failed", "text.mp4": "failed", "png_named.mp4": "failed", "truncated.mp4": "failed"}


def identity_splits(*, seed: int = 0, fractions: tuple[float, float, float] = (0.5, 0.2, 0.3),
                    train: tuple[str, ...] = ("carphone",), test: tuple[str, ...] = ("astronaut",)) -> dict[str, str]:
    """Every identity of the real material -> ``train`` / ``val`` / ``test``: the named ones where given, the LFW
    portraits shuffled by ``seed`` and cut by ``fractions``."""
    rng = seeded_rng(seed, "identities")
    lfw = [PORTRAITS[i] for i in rng.permutation(len(PORTRAITS))]
    a = int(round(fractions[0] * len(lfw)))
    b = a + int(round(fractions[1] * len(lfw)))
    out = {p: ("train" if i < a else "val" if i < b else "test") for i, p in enumerate(lfw)}
    return out | {k: "train" for k in train} | {k: "test" for k in test}


def _sources_of(ident: str) -> tuple[str, ...]:
    return ("pristine", "distorted") if ident == "carphone" else (ident,)


def identity_archive(dir, *, splits: dict[str, str], counts: dict[str, tuple[int, int]],
                     methods: tuple[str, ...] = METHODS, size: tuple[int, int] = (192, 108), seconds: float = 1.0,
                     fps: float = 15, seed: int = 0):
    """Write a labelled archive whose splits share no identity (the LOMO protocol's data) and return its table.

    ``splits``: identity -> split (`identity_splits`); ``counts``: split -> (REAL clips, FAKE clips per method).
    One clip in three shows the split's full-resolution identity when it has one (the carphone man, alternating
    pristine and crushed footage; the astronaut), the others cycle over its LFW portraits (25 px faces enlarged:
    little detail for a manipulation to disturb); a swap takes its donor from the same split. ``labels.csv``: ``file,label,method,split,group`` (group = the identity shown;
    the CSV reader keeps the given splits). The returned table adds ``source, donor, seed``.
    """
    import pandas as pd

    d = Path(dir)
    d.mkdir(parents=True, exist_ok=True)
    kw = dict(size=size, seconds=seconds, fps=fps)
    rows = []
    for split, (n_real, n_fake) in counts.items():
        people = sorted(k for k, v in splits.items() if v == split)
        if not people:
            continue
        order = [people[i] for i in seeded_rng(seed, split, "order").permutation(len(people))]
        mains = [s for p in order if p not in PORTRAITS for s in _sources_of(p)]
        lfw = [p for p in order if p in PORTRAITS] or mains
        sources = [mains[(i // 3) % len(mains)] if mains and i % 3 == 0 else lfw[(i - i // 3 - 1 if mains else i) % len(lfw)]
                   for i in range(3 * len(order) + 3)]
        donors = frozenset(people)
        for i in range(n_real):
            src, s = sources[i % len(sources)], seed * 100_000 + i
            name = f"{split}/real_{i:03d}.mp4"
            real_clip(d / name, seed=s, source=src, **kw)
            rows.append((name, "REAL", "", split, identity(src), src, "", s))
        for m, method in enumerate(methods):
            for i in range(n_fake):
                src = sources[(i + 7 * m + 3) % len(sources)]
                s = seed * 100_000 + 1000 * (m + 1) + i
                name = f"{split}/{method}_{i:03d}.mp4"
                plan = Plan(s, src, size, seconds, fps)
                faker = Faker(plan, method, donors)
                plan.write(d / name, faker)
                rows.append((name, "FAKE", method, split, identity(src), src,
                             faker.donor_id if faker.donor_id != identity(src) else "", s))
    df = pd.DataFrame(rows, columns=["file", "label", "method", "split", "group", "source", "donor", "seed"])
    df[["file", "label", "method", "split", "group"]].to_csv(d / "labels.csv", index=False)
    return df


_REAL_SOURCES = ("pristine", "astronaut", "distorted", "pristine", "distorted")
_FAKE_SOURCES = ("pristine", "astronaut", "distorted", "pristine")


def demo_archive(dir, *, n_real: int = 8, n_fake: int = 8, size: tuple[int, int] = (640, 360),
                 seconds: float = 4.0, fps: float = 30, seed: int = 0, faceless: bool = True,
                 broken: bool = True, methods: tuple[str, ...] = METHODS):
    """Write a labelled archive (flat CSV layout) into ``dir`` and return its table.

    Files: real_XXX.mp4 (sources cycle pristine/astronaut/distorted), fake_XXX.mp4 (sources x methods
    cycle), faceless_000.mp4 (REAL, expected status ``no_face``) and broken_000.mp4 (a truncated mp4,
    REAL, expected status ``failed``). Every clip has its own seed (fakes are not the reals' twins).
    ``labels.csv`` has columns ``file,label``; the returned DataFrame adds ``source, method, seed, status``
    (expected pipeline status).
    """
    import pandas as pd

    d = Path(dir)
    d.mkdir(parents=True, exist_ok=True)
    kw = dict(size=size, seconds=seconds, fps=fps)
    rows = []
    for i in range(n_real):
        s, src = seed * 1000 + i, _REAL_SOURCES[i % len(_REAL_SOURCES)]
        real_clip(d / f"real_{i:03d}.mp4", seed=s, source=src, **kw)
        rows.append((f"real_{i:03d}.mp4", "REAL", src, "", s, "ok"))
    for i in range(n_fake):
        s, src = seed * 1000 + 500 + i, _FAKE_SOURCES[i % len(_FAKE_SOURCES)]
        method = methods[i % len(methods)]
        fake_clip(d / f"fake_{i:03d}.mp4", seed=s, source=src, method=method, **kw)
        rows.append((f"fake_{i:03d}.mp4", "FAKE", src, method, s, "ok"))
    if faceless:
        faceless_clip(d / "faceless_000.mp4", seed=seed, **kw)
        rows.append(("faceless_000.mp4", "REAL", "faceless", "", seed, "no_face"))
    if broken:
        truncated(d / "broken_000.mp4", lambda tmp: real_clip(tmp, seed=seed * 1000 + 999, size=(320, 180), seconds=1.0, fps=fps))
        rows.append(("broken_000.mp4", "REAL", "broken", "", seed, "failed"))
    df = pd.DataFrame(rows, columns=["file", "label", "source", "method", "seed", "status"])
    df[["file", "label"]].to_csv(d / "labels.csv", index=False)
    return df


def bench_archive(dir, *, n: int = 4, size: tuple[int, int] = (1280, 720), seconds: float = 10.0,
                  fps: float = 30, seed: int = 0) -> list[Path]:
    """Write ``n`` REAL H.264 clips (bench_XXX.mp4; pristine carphone / astronaut: a face in every frame)."""
    d = Path(dir)
    d.mkdir(parents=True, exist_ok=True)
    srcs = ("pristine", "astronaut")  # not "distorted": MTCNN misses its face in ~40% of frames
    return [real_clip(d / f"bench_{i:03d}.mp4", seed=seed * 1000 + i, source=srcs[i % len(srcs)], size=size,
                      seconds=seconds, fps=fps) for i in range(n)]


__all__ = ["METHODS", "PORTRAITS", "SOURCES", "assets_dir", "bench_archive", "broken_files", "demo_archive",
           "detect_faces", "face_boxes", "fake_clip", "faceless_clip", "identity_archive", "identity_splits", "real_clip",
           "resolve_method", "write_video"]
