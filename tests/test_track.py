"""Tracking a synthetic sequence made from a photo with smooth homography motion.

Frame ``t`` shows the photo moved so that the template (cut at ``H_REF``) sits at the known
pixel matrix ``motion(t)``; ``lkstn track`` must follow it to within 0.5 px per frame (corner
RMS; the frames are 8-bit and resampled twice by OpenCV, which costs ~0.1 px).
"""

import json

import numpy as np
import pytest
from skimage import data, io

from lkstn import ICLK, Homography
from lkstn.cli import main
from lkstn.track import track

cv2 = pytest.importorskip("cv2")

SIDE = 96
H_REF = np.array([[1.0, 0.0, 250.0], [0.0, 1.0, 150.0], [0.0, 0.0, 1.0]])


def motion(t):
    return np.array([
        [1 + 0.05 * np.sin(t / 5), 0.03 * np.sin(t / 7), 250 + 40 * np.sin(t / 6)],
        [0.02 * np.cos(t / 5), 1 - 0.04 * np.sin(t / 4), 150 + 20 * np.cos(t / 8)],
        [1e-4 * np.sin(t / 9), 5e-5 * np.cos(t / 6), 1.0],
    ])  # fmt: skip


def corner_rms(H, G):
    c = np.array([[0, 0, 1], [SIDE - 1, 0, 1], [SIDE - 1, SIDE - 1, 1], [0, SIDE - 1, 1.0]])
    a, b = c @ np.asarray(H).T, c @ np.asarray(G).T
    return float(np.sqrt(((a[:, :2] / a[:, 2:] - b[:, :2] / b[:, 2:]) ** 2).sum(1).mean()))


def inverse_map(image, H, size):
    return cv2.warpPerspective(image, H, size, flags=cv2.INTER_LINEAR + cv2.WARP_INVERSE_MAP)


@pytest.fixture(scope="module")
def sequence(tmp_path_factory):
    root = tmp_path_factory.mktemp("seq")
    photo = data.coffee()  # (400, 600, 3)
    io.imsave(root / "template.png", inverse_map(photo, H_REF, (SIDE, SIDE)))
    paths = []
    for t in range(30):
        # frame(x) = photo(G x) with G motion(t) = H_REF: the template appears at motion(t)
        frame = inverse_map(photo, H_REF @ np.linalg.inv(motion(t)), (600, 400))
        paths.append(root / f"frame_{t:02d}.png")
        io.imsave(paths[-1], frame, check_contrast=False)
    return root, paths


def test_lkstn_track_follows_30_frames(sequence, tmp_path):
    root, paths = sequence
    x0, y0 = motion(0)[:2, 2] + [4.0, -3.0]  # a box 5 px from the truth
    box = [str(v) for v in (x0, y0, x0 + SIDE - 1, y0 + SIDE - 1)]
    code = main(["track", str(root / "template.png"), *map(str, paths), "--warp", "homography",
                 "--box", *box, "--out", str(tmp_path), "--no-overlay"])  # fmt: skip
    assert code == 0
    rec = json.loads((tmp_path / "track.json").read_text())
    errors = [corner_rms(H, motion(t)) for t, H in enumerate(rec["pixel_matrix"])]
    assert max(errors) < 0.5, errors
    assert all(rec["ok"]) and min(rec["score"]) > 0.99
    assert max(rec["uncertainty"]) < 0.1  # 8-bit frames of a textured photo: well fixed
    rows = (tmp_path / "track.csv").read_text().strip().splitlines()
    assert len(rows) == 31 and rows[0].startswith("frame,file,score,ok,redetected,uncertainty,h00")


def test_lost_frames_are_redetected(sequence):
    """A frame in which the template jumped 20 px (beyond a single alignment's reach) is found
    by the re-detection around the last good position."""
    root, paths = sequence
    template = io.imread(root / "template.png").mean(-1) / 255.0
    frames = [io.imread(p).mean(-1) / 255.0 for p in paths[:4]]
    jump = np.array([[1.0, 0.0, 20.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]])
    frames[2] = inverse_map(frames[2], np.linalg.inv(jump), (600, 400))  # content moved right
    aligner = ICLK(template, warp=Homography(), n_iter=50)
    out = track(aligner, frames, motion(0), min_score=0.95)
    assert out.redetected[2] and out.ok[2]
    assert corner_rms(out.H[2], jump @ motion(2)) < 0.5


def test_track_writes_a_gif(sequence, tmp_path):
    root, paths = sequence
    code = main(["track", str(root / "template.png"), *map(str, paths[:3]), "--warp",
                 "homography", "--init", _matrix_file(tmp_path, motion(0)), "--out",
                 str(tmp_path), "--gif"])  # fmt: skip
    assert code == 0
    from PIL import Image

    with Image.open(tmp_path / "track.gif") as gif:
        assert gif.n_frames == 3


def _matrix_file(tmp_path, H):
    path = tmp_path / "H.txt"
    path.write_text("\n".join(" ".join(str(float(v)) for v in row) for row in H))
    return str(path)
