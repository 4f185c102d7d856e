"""Key-slice pictures: axial slices in a lung window with the findings circled (OpenCV, PNG)."""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

LUNG_WINDOW = (-600.0, 1500.0)   # (centre, width) HU


def window(hu_YX: np.ndarray, centre: float = LUNG_WINDOW[0], width: float = LUNG_WINDOW[1]) -> np.ndarray:
    """uint8 grey image of a HU slice in the given window."""
    lo = centre - width / 2
    return (np.clip((hu_YX - lo) / width, 0, 1) * 255).astype(np.uint8)


def render_slice(hu_ZYX: np.ndarray, spacing_zyx: Sequence[float], k: int, findings: Sequence,
                 highlight: int | None = None, min_side: int = 384) -> np.ndarray:
    """RGB uint8 [H, W, 3] of axial slice k, square pixels, every finding crossing the slice circled
    (the highlighted one in red, others in yellow) and labelled with its id and probability."""
    import cv2

    k = int(np.clip(k, 0, hu_ZYX.shape[0] - 1))
    grey = window(hu_ZYX[k])
    sy, sx = float(spacing_zyx[1]), float(spacing_zyx[2])
    H, W = grey.shape
    scale = max(1.0, min_side / max(H * sy, W * sx))      # output pixels per mm
    size = (max(1, round(W * sx * scale)), max(1, round(H * sy * scale)))
    rgb = cv2.cvtColor(cv2.resize(grey, size, interpolation=cv2.INTER_LINEAR), cv2.COLOR_GRAY2RGB)
    for f in findings:
        dz_mm = abs(f.k - k) * float(spacing_zyx[0])
        r_mm = f.diameter_mm / 2 + 3
        if dz_mm > r_mm:
            continue
        r_px = max(4, round(np.sqrt(r_mm ** 2 - dz_mm ** 2) * scale))
        centre = (round((f.i + 0.5) * sx * scale), round((f.j + 0.5) * sy * scale))
        colour = (255, 40, 40) if f.nodule_id == highlight else (255, 220, 0)
        cv2.circle(rgb, centre, r_px, colour, 2, cv2.LINE_AA)
        cv2.putText(rgb, f"#{f.nodule_id} p={f.probability:.2f}", (centre[0] + r_px + 3, centre[1] - r_px),
                    cv2.FONT_HERSHEY_SIMPLEX, 0.45, colour, 1, cv2.LINE_AA)
    cv2.putText(rgb, f"slice {k}  research use only", (6, 16), cv2.FONT_HERSHEY_SIMPLEX, 0.45,
                (200, 200, 200), 1, cv2.LINE_AA)
    return rgb


def write_overlays(hu_ZYX: np.ndarray, spacing_zyx: Sequence[float], findings: Sequence, folder: Path) -> list[Path]:
    """One PNG per finding, its central key slice: nodule_<id>_k<k>.png."""
    import cv2

    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for f in findings:
        k = f.key_slices[0]
        path = folder / f"nodule_{f.nodule_id}_k{k}.png"
        rgb = render_slice(hu_ZYX, spacing_zyx, k, findings, highlight=f.nodule_id)
        if not cv2.imwrite(str(path), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR)):
            raise OSError(f"{path}: could not write the PNG")
        paths.append(path)
    return paths
