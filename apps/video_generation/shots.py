"""Shot analysis measured from pixels: shot boundaries, and per-shot descriptors (brightness,
dominant colours, motion, camera movement) that hold for any footage, synthetic or real.

    shots = detect_shots(frames_FHW3, fps)          # hard cuts and gradual transitions (fades)
    desc = describe_shot(frames_FHW3[s.start_frame:s.end_frame], fps)
    desc.phrase()  # "a bright scene, mostly green and blue, camera pans left, strong motion"

Boundary detection: per frame pair, the HSV-histogram distance (what changed in content) plus the
mean absolute grey-level difference (where it changed). A hard cut is a spike of that score far
above its local baseline (median + k * MAD over a sliding window, so a busy shot raises its own
bar), above an absolute floor; a gradual transition is a window whose two end frames differ like
a cut and whose inner frames are blends of its ends (which motion and camera moves are not), tested at the
analysis size and, for ends far apart, on a coarse copy and up to a few pixels of motion (real footage keeps
moving during a dissolve), and whose middle frame loses contrast as a blend of two different pictures does
(a pan over a smooth backdrop also looks like a blend when coarse, but keeps its contrast); the motion-tolerant
test also needs the middle frame to be unlike either end moved as a whole (a pan with things moving in it).
A fade in at the clip's very start or out at its end is no boundary; nor is a flash (two jumps a few frames
apart after which the picture is the one before). Boundaries closer than a minimum shot length keep the
stronger one. A cut between two shots of one set (the same backdrop, the
camera where it was) changes only the objects, too little of the frame for that score: a second score, the
motion-compensated difference (what no move of a few pixels explains; more pixels below 12 fps), finds it
with the same peak test. A pair whose colours and compensated difference both change by a large share is a
cut with no baseline at all: slideshows and 1-2 fps clips have cuts too dense for a window's median.

Descriptors (of the picture inside any letterbox / pillarbox bars): brightness from Lab L; dominant colours by k-means in Lab, named from lightness,
chroma and (OKLab) hue; motion and camera from Farneback optical flow on downscaled grey frames, the
camera taken as the global (median) translation and radial scale of the flow field (still when still
corners spread over the frame are at least half as many as the moving consensus: a large object passing a
locked-off camera), motion as what is left once the camera's part is removed, where the camera's move
alone does not predict the next frame as well as the flow does (flow is blind inside flat areas, which a
pan would otherwise turn into motion against it). Flow pairs join frames that start a run of repeats, each
timed by its own gap: animation held on twos or threes, and variable-rate clips re-timed to a constant
rate, move between runs, not within one.

Shape legend: F frames, H height, W width; small frames are the downscaled analysis copies.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

import cv2
import numpy as np


@dataclass
class ShotConfig:
    analysis_width: int = 96         # frames are downscaled to this width for boundary scores
    hist_bins: tuple[int, int, int] = (16, 4, 4)  # H, S, V bins of the colour histogram
    pixel_weight: float = 2.0        # weight of the grey-level difference (in [0, 1]) in the score
    window: int = 12                 # frames each side of a pair in its local baseline
    mad_k: float = 6.0               # a cut's score exceeds median + mad_k * MAD of its window
    ratio: float = 3.0               # ... and ratio * that median
    cut_floor: float = 0.05          # ... and this absolute score (hist distance + weighted pixel diff)
    peak_ratio: float = 2.5          # ... and this times every other score within a minimum shot length
    gradual: bool = True             # also look for fades and dissolves
    gradual_min_frames: int = 4      # a gradual transition spans at least this many frames
    gradual_max_s: float = 2.0       # ... and at most this long
    gradual_end_dist: float = 0.3    # score between the two ends of a gradual transition
    blend_tolerance: float = 0.2     # inner frames' deviation from the blend of the ends / their distance
    coarse_width: int = 24           # ... also tested on frames this wide (motion during a dissolve averages out)
    coarse_end_dist: float = 0.6     # ... when the ends' score is at least this
    dip_share: float = 0.5           # the middle frame's contrast falls at least this share of what the blend's would
    flat_std: float = 0.02           # a frame whose grey levels vary less than this is flat (black, white)
    flash_return: float = 0.35       # two cuts close together whose outer frames differ less than this share
                                     # of the smaller cut's score are a flash (the shot resumes), not cuts
    shift_margin: float = 1.5        # a moving dissolve's middle frame misfits either end moved as a whole this
                                     # many times more than it misfits the blend of the ends (else: a pan)
    cut_in_gradual: float = 0.5      # a one-frame grey jump this share of a gradual span's whole change: a cut
    min_shot_s: float = 0.3          # shots shorter than this are merged into a neighbour
    still_backdrop: bool = True      # also look for cuts that change only the objects, not the backdrop
    shift_radius: int = 2            # ... by a motion-compensated difference: pixels (at analysis_width) a
                                     # thing may move between frames and still count as the same thing
    shift_floor: float = 0.0005      # ... a cut's compensated difference (grey levels in [0, 1]) is above this
    shift_fps: float = 12.0          # ... below this frame rate the radius grows as 1 / fps (more motion a frame)
    # A boundary is a light change within one shot (auto-exposure, a lamp) when its two sides, grey levels
    # matched by rank, differ by less than exposure_floor (compensated difference) and less than exposure_share
    # of their difference unmatched, and their colour balances (channel shares, L1) by less than exposure_balance.
    exposure_floor: float = 0.01
    exposure_share: float = 0.3
    exposure_balance: float = 0.03
    recoded_hist: float = 0.25       # a jump no motion explains is a still picture coded anew (a key frame)
                                     # unless its colours change by at least this (a cut between colours of one grey)
    sure_hist: float = 0.5           # a pair whose histogram distance is at least this and whose
    sure_shift: float = 0.05         # compensated difference (at shift_radius) is at least this is a cut outright,
                                     # no baseline needed (slideshows and low frame rates, where cuts are too
                                     # dense for the window's median); of two closer than a minimum shot, the
                                     # minimum-length rule keeps the one with the larger score


@dataclass
class Shot:
    start_frame: int                 # first frame of the shot
    end_frame: int                   # one past its last frame
    start_s: float
    end_s: float
    transition: str = "start"        # how the shot begins: "start", "cut" or "gradual"

    @property
    def frames(self) -> int:
        return self.end_frame - self.start_frame


def _check_frames(frames_FHW3: np.ndarray) -> None:
    if not isinstance(frames_FHW3, np.ndarray) or frames_FHW3.ndim != 4 or frames_FHW3.shape[-1] != 3:
        shape = getattr(frames_FHW3, "shape", None)
        raise ValueError(f"frames must be an array [frames, height, width, 3] (RGB), got shape {shape}")
    if frames_FHW3.shape[0] == 0:
        raise ValueError("frames: the clip has no frames")


def _small(frame_HW3: np.ndarray, width: int) -> np.ndarray:
    h, w = frame_HW3.shape[:2]
    if w <= width:
        return frame_HW3
    return cv2.resize(frame_HW3, (width, max(1, round(h * width / w))), interpolation=cv2.INTER_AREA)


def frame_signatures(frames_FHW3: np.ndarray, cfg: ShotConfig) -> tuple[np.ndarray, np.ndarray]:
    """Per frame: normalised HSV histogram [F, bins] and small grey image [F, h, w] in [0, 1]."""
    hists, greys = [], []
    for frame in frames_FHW3:
        small = np.ascontiguousarray(_small(frame, cfg.analysis_width))
        hsv = cv2.cvtColor(small, cv2.COLOR_RGB2HSV)
        hist = cv2.calcHist([hsv], [0, 1, 2], None, list(cfg.hist_bins), [0, 180, 0, 256, 0, 256]).ravel()
        hists.append(hist / max(hist.sum(), 1.0))
        greys.append(cv2.cvtColor(small, cv2.COLOR_RGB2GRAY).astype(np.float32) / 255.0)
    return np.stack(hists), np.stack(greys)


def _pair_score(hist_a, hist_b, grey_a, grey_b, cfg: ShotConfig) -> float:
    return 0.5 * float(np.abs(hist_a - hist_b).sum()) + cfg.pixel_weight * float(np.abs(grey_a - grey_b).mean())


def boundary_scores(frames_FHW3: np.ndarray, cfg: ShotConfig | None = None) -> np.ndarray:
    """scores[i] for i >= 1: how much frame i differs from frame i - 1 (scores[0] = 0)."""
    cfg = cfg or ShotConfig()
    _check_frames(frames_FHW3)
    hist_FB, grey_Fhw = frame_signatures(frames_FHW3, cfg)
    return _scores(_hist_steps(hist_FB), grey_Fhw, cfg)


def _hist_steps(hist_FB: np.ndarray) -> np.ndarray:
    """steps[i] for i >= 1: the histogram distance (half the L1, in [0, 1]) from frame i - 1 to frame i."""
    hist_F = np.zeros(len(hist_FB), dtype=hist_FB.dtype)
    if len(hist_FB) > 1:
        hist_F[1:] = 0.5 * np.abs(np.diff(hist_FB, axis=0)).sum(axis=1)
    return hist_F


def _scores(hist_F: np.ndarray, grey_Fhw: np.ndarray, cfg: ShotConfig) -> np.ndarray:
    scores_F = np.zeros(len(hist_F), dtype=np.float64)
    if len(hist_F) > 1:
        scores_F[1:] = hist_F[1:] + cfg.pixel_weight * np.abs(np.diff(grey_Fhw, axis=0)).mean(axis=(1, 2))
    return scores_F


def _grey_ranges(grey_Fhw: np.ndarray, radius: int) -> tuple[np.ndarray, np.ndarray]:
    """Each frame's least and greatest grey level within `radius` pixels: (lo_Fhw, hi_Fhw)."""
    k = np.ones((2 * radius + 1, 2 * radius + 1), np.uint8)
    return np.stack([cv2.erode(g, k) for g in grey_Fhw]), np.stack([cv2.dilate(g, k) for g in grey_Fhw])


def compensated_scores(grey_Fhw: np.ndarray, radius: int) -> np.ndarray:
    """scores[i] for i >= 1: the grey-level change from frame i - 1 to frame i that no motion of up
    to `radius` pixels explains, both ways (what appears and what disappears): how far each pixel
    lies outside the range its neighbourhood held in the other frame, averaged. Objects that move
    and a camera that pans or zooms score near zero; an object that vanishes while another appears
    elsewhere over the same backdrop (a cut between two shots of one set) does not."""
    return _compensated(grey_Fhw, *_grey_ranges(grey_Fhw, radius))


def _outside(g: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    """How far each grey level of g lies outside the range [lo, hi] (0 inside it), elementwise."""
    return np.maximum(lo - g, 0.0) + np.maximum(g - hi, 0.0)


def _compensated(grey_Fhw: np.ndarray, lo_Fhw: np.ndarray, hi_Fhw: np.ndarray) -> np.ndarray:
    """compensated_scores from the frames' grey ranges (_grey_ranges)."""
    scores_F = np.zeros(len(grey_Fhw), dtype=np.float64)
    if len(grey_Fhw) > 1:
        scores_F[1:] = 0.5 * (_outside(grey_Fhw[1:], lo_Fhw[:-1], hi_Fhw[:-1]).mean(axis=(1, 2)) +
                              _outside(grey_Fhw[:-1], lo_Fhw[1:], hi_Fhw[1:]).mean(axis=(1, 2)))
    return scores_F


def held_pairs(grey_Fhw: np.ndarray) -> np.ndarray:
    """held[i]: frame i repeats the first frame of its run (_run_starts; grey levels in [0, 1]): footage of
    10 fps in a 30 fps file, animation on threes, slow motion by repeated frames. Slow motion by new frames
    starts new runs."""
    return _run_starts(list(grey_Fhw), tol=8 / 255) != np.arange(len(grey_Fhw))


def _local_baseline(scores_F: np.ndarray, i: int, cfg: ShotConfig,
                    held_F: np.ndarray | None = None) -> tuple[float, float]:
    """Median and MAD of the pair scores around pair i (pair i itself and its neighbours excluded). Held pairs
    (held_F: a frame repeated) are left out when at least 3 others remain: between repeats the footage's real
    changes come all at once, and a baseline of the repeats' zeros would make each of them a cut."""
    lo, hi = max(1, i - cfg.window), min(len(scores_F), i + cfg.window + 1)
    around = np.concatenate([scores_F[lo:max(lo, i - 1)], scores_F[min(hi, i + 2):hi]])
    if held_F is not None:
        moving = around[~np.concatenate([held_F[lo:max(lo, i - 1)], held_F[min(hi, i + 2):hi]])]
        around = moving if moving.size >= 3 else around
    if around.size == 0:
        return 0.0, 0.0
    med = float(np.median(around))
    return med, float(np.median(np.abs(around - med)))


def _hard_cuts(scores_F: np.ndarray, min_len: int, cfg: ShotConfig, floor: float | None = None,
               flashes: bool = True, held_F: np.ndarray | None = None) -> list[tuple[int, float]]:
    """Pairs whose score stands out of its window (held pairs, held_F, left out of it: _local_baseline), and
    out-scores by `peak_ratio` every other pair closer than a shot's minimum length (renderer jitter and
    flicker make lone bumps, not peaks); `floor` (default cfg.cut_floor) is the least score of a cut. With
    `flashes`, two such pairs close together are both kept (the two cuts of a short flash)."""
    floor = cfg.cut_floor if floor is None else floor
    candidates = []
    for i in range(1, len(scores_F)):
        s = scores_F[i]
        if s < floor:
            continue
        med, mad = _local_baseline(scores_F, i, cfg, held_F)
        if s > med + cfg.mad_k * mad and s > cfg.ratio * med:
            candidates.append(i)
    others_F = scores_F.copy()
    if flashes:
        others_F[candidates] = 0.0  # two cuts of a short flash do not silence each other
    cuts = []
    reach = max(min_len, 2)  # at least the pairs either side, also where a minimum shot is one frame (low fps)
    for i in candidates:
        near = np.concatenate([others_F[max(1, i - reach + 1):i], others_F[i + 1:i + reach]])
        if near.size == 0 or scores_F[i] > cfg.peak_ratio * near.max():
            cuts.append((i, float(scores_F[i])))
    return cuts


def _sure_cuts(hist_F: np.ndarray, shift_F: np.ndarray, cfg: ShotConfig) -> list[int]:
    """Pairs whose colours change by at least `sure_hist` of the histogram while at least `sure_shift` of the
    grey levels is out of reach of small motion: cuts without a baseline (a slideshow of different pictures, a
    1-2 fps clip whose every few frames are a new shot). Of two such pairs closer than a minimum shot, the
    minimum-length rule keeps the stronger. hist_F: _hist_steps; shift_F: compensated_scores."""
    return [int(i) for i in np.flatnonzero((hist_F >= cfg.sure_hist) & (shift_F >= cfg.sure_shift)) if i >= 1]


def _blend_misfit(grey_Fhw: np.ndarray, a: int, b: int, c: int, k: int, spread: float,
                  lo_Fhw: np.ndarray | None = None, hi_Fhw: np.ndarray | None = None) -> float:
    """The largest mean deviation of frames c - k/2, c, c + k/2 from the linear blend of frames a and b,
    relative to the ends' mean difference `spread` (inf when the ends hardly differ). With lo / hi (each
    frame's grey range over a small neighbourhood), the deviation from the range the blend of those takes:
    a blend up to a few pixels of motion."""
    if spread < 1e-3:
        return math.inf
    worst = 0.0
    for m in {c - k // 2, c, c + k // 2}:
        t = (m - a) / (b - a)
        if lo_Fhw is None or hi_Fhw is None:
            dev = np.abs(grey_Fhw[m] - ((1 - t) * grey_Fhw[a] + t * grey_Fhw[b]))
        else:
            lo, hi = (1 - t) * lo_Fhw[a] + t * lo_Fhw[b], (1 - t) * hi_Fhw[a] + t * hi_Fhw[b]
            dev = _outside(grey_Fhw[m], lo, hi)
        worst = max(worst, float(dev.mean()) / spread)
    return worst


def _shift_misfit(grey_Fhw: np.ndarray, lo_Fhw: np.ndarray, hi_Fhw: np.ndarray, src: int, m: int,
                  spread: float) -> float:
    """How far frame m lies from frame `src` moved as a whole (the translation phase correlation finds, rounded
    to whole pixels), up to the few pixels of lo / hi, over the area the two share, relative to `spread`: near
    zero when m is src panned (things moving in it aside), large when m is a blend with another picture."""
    h, w = grey_Fhw.shape[1:]
    (dx, dy), _ = cv2.phaseCorrelate(grey_Fhw[src].astype(np.float64), grey_Fhw[m].astype(np.float64))
    best = math.inf
    for sx, sy in ((round(dx), round(dy)), (-round(dx), -round(dy))):   # either sign convention: the better fit
        if abs(sx) >= w // 2 or abs(sy) >= h // 2:
            continue
        in_m = (slice(max(sy, 0), h + min(sy, 0)), slice(max(sx, 0), w + min(sx, 0)))
        in_src = (slice(max(-sy, 0), h + min(-sy, 0)), slice(max(-sx, 0), w + min(-sx, 0)))
        g, lo, hi = grey_Fhw[m][in_m], lo_Fhw[src][in_src], hi_Fhw[src][in_src]
        best = min(best, float(_outside(g, lo, hi).mean()) / spread)
    return best


def _contrast_dips(a_hw: np.ndarray, mid_hw: np.ndarray, b_hw: np.ndarray, share: float) -> bool:
    """Whether the middle frame loses contrast as the even blend of a and b would: var((a + b) / 2) falls
    short of the mean of var(a) and var(b) by var(a - b) / 4. A camera moving over smooth content (a pan
    across sky or a blurred backdrop) also passes for a blend at coarse scale, but keeps its contrast."""
    expected = 0.25 * float((a_hw - b_hw).var())
    observed = 0.5 * (float(a_hw.var()) + float(b_hw.var())) - float(mid_hw.var())
    return observed >= share * expected


def _gradual(grey_Fhw: np.ndarray, hist_FB: np.ndarray, lo_Fhw: np.ndarray, hi_Fhw: np.ndarray, fps: float,
             cfg: ShotConfig) -> list[tuple[int, float, int]]:
    """Gradual transitions as (centre frame, strength, half-width): windows [c - k, c + k] whose two
    end frames differ like a cut while the frames between are blends of the ends (a dissolve or
    fade is linear in the pixels; motion and camera moves are not). Non-maximum suppressed. lo / hi:
    each frame's grey range within shift_radius pixels (_grey_ranges)."""
    F = len(grey_Fhw)
    coarse_Fhw = grey_Fhw if grey_Fhw.shape[2] <= cfg.coarse_width else \
        np.stack([_small(g, cfg.coarse_width) for g in grey_Fhw])
    max_k = max(2, int(round(cfg.gradual_max_s * fps / 2)))
    widths = sorted({k for k in (2, 3, 5, 8, 12, 18, 27) if k <= max_k} | {max_k})
    found = []
    for k in widths:
        if 2 * k < cfg.gradual_min_frames:
            continue
        for c in range(k, F - k):
            a, b = c - k, c + k
            ends = _pair_score(hist_FB[a], hist_FB[b], grey_Fhw[a], grey_Fhw[b], cfg)
            if ends < cfg.gradual_end_dist:
                continue
            spread = float(np.abs(grey_Fhw[a] - grey_Fhw[b]).mean())
            if spread < 1e-3:
                continue
            # The blend tests at the analysis size, else on a coarse copy: real footage keeps moving during a
            # dissolve (and some dissolves are dithered), which only the coarse copy averages away. Only ends
            # far apart go to the coarse copy: a zoom over a smooth backdrop is a blend there.
            levels = [(grey_Fhw, spread)]
            if ends >= cfg.coarse_end_dist:
                levels.append((coarse_Fhw, float(np.abs(coarse_Fhw[a] - coarse_Fhw[b]).mean())))
            for g, g_spread in levels:
                worst = _blend_misfit(g, a, b, c, k, g_spread)
                if worst < cfg.blend_tolerance and _contrast_dips(g[a], g[c], g[b], cfg.dip_share):
                    found.append((c, ends * (1 - worst), k))
                    break
            else:
                # Both clips may keep moving through the dissolve (a cyclist crossing while the next shot fades
                # in): inner frames then blend the ends only up to a few pixels of motion. Tested at the
                # analysis size, ends far apart only, and the middle frame must lose contrast as a blend does.
                # A camera move with things moving in the shot passes that range test too (the range is loose):
                # the middle frame must also be unlike either end moved as a whole, by a margin over its misfit
                # as a blend (a dissolve's middle frame is half of each picture, which no shift of one gives).
                if ends >= cfg.coarse_end_dist:
                    worst = _blend_misfit(grey_Fhw, a, b, c, k, spread, lo_Fhw, hi_Fhw)
                    if worst < cfg.blend_tolerance and _contrast_dips(grey_Fhw[a], grey_Fhw[c], grey_Fhw[b],
                                                                      cfg.dip_share):
                        moved = min(_shift_misfit(grey_Fhw, lo_Fhw, hi_Fhw, e, c, spread) for e in (a, b))
                        if moved >= cfg.shift_margin * worst:
                            found.append((c, ends * (1 - worst), k))
    kept: list[tuple[int, float, int]] = []
    for cand in sorted(found, key=lambda x: (-x[1], -x[2])):
        if all(abs(cand[0] - c) > max(cand[2], k) for c, _, k in kept):
            kept.append(cand)
    return sorted(kept)


def detect_shots(frames_FHW3: np.ndarray, fps: float, cfg: ShotConfig | None = None) -> list[Shot]:
    """The shots of a clip, in order, covering every frame: Shot(start_frame, end_frame (exclusive),
    start_s, end_s, transition)."""
    cfg = cfg or ShotConfig()
    _check_frames(frames_FHW3)
    if not fps or fps <= 0 or not math.isfinite(fps):
        raise ValueError(f"fps must be a positive number, got {fps}")
    hist_FB, grey_Fhw = frame_signatures(frames_FHW3, cfg)
    hist_F = _hist_steps(hist_FB)
    scores_F = _scores(hist_F, grey_Fhw, cfg)
    min_len = max(1, int(round(cfg.min_shot_s * fps)))
    held_F = held_pairs(grey_Fhw)
    lo_Fhw, hi_Fhw = _grey_ranges(grey_Fhw, cfg.shift_radius)     # also the dissolves' motion range
    shift_F = _compensated(grey_Fhw, lo_Fhw, hi_Fhw)
    # A jump that small motion explains away entirely is the same picture coded anew (a key frame of a still
    # shot codes its noise afresh: the colours of greyish pixels jump, the picture does not), not a cut.
    cuts = [(i, s, "cut") for i, s in _hard_cuts(scores_F, min_len, cfg, held_F=held_F)
            if shift_F[i] >= cfg.shift_floor or hist_F[i] >= cfg.recoded_hist]
    cuts += [(i, float(scores_F[i]), "cut") for i in _sure_cuts(hist_F, shift_F, cfg)
             if all(i != c[0] for c in cuts)]
    if cfg.still_backdrop:
        # Ranked by their plain score, so where both find a cut the first one's frame is kept, and of two
        # neighbouring candidates (a fast move right after the cut) the one the frames' content changes most at.
        # At low frame rates things move further between frames: the radius grows with the frame interval.
        radius = max(cfg.shift_radius, round(cfg.shift_radius * cfg.shift_fps / fps))
        cuts += [(i, float(scores_F[i]), "cut") for i, _ in _hard_cuts(
            shift_F if radius == cfg.shift_radius else compensated_scores(grey_Fhw, radius),
            min_len, cfg, cfg.shift_floor, flashes=False, held_F=held_F)]
    if cfg.gradual:
        flat_F = grey_Fhw.std(axis=(1, 2)) < cfg.flat_std   # flat frames (black, white): where fades meet
        spans = _merge_fades(_gradual(grey_Fhw, hist_FB, lo_Fhw, hi_Fhw, fps, cfg), flat_F,
                             int(round(cfg.gradual_max_s * fps)))
        # A dissolve or fade changes the pixels a step at a time: a "span" holding one jump about as large as the
        # whole change from its first to its last frame is a hard cut beside a smooth camera move.
        def one_jump(a: int, b: int) -> bool:
            whole = float(np.abs(grey_Fhw[min(b + 1, len(grey_Fhw) - 1)] - grey_Fhw[max(a - 1, 0)]).mean())
            return any(a <= i <= b + 1 and float(np.abs(grey_Fhw[i] - grey_Fhw[i - 1]).mean()) >= cfg.cut_in_gradual
                       * whole for i, _, _ in cuts)
        spans = [(a, b, st) for a, b, st in spans if not one_jump(a, b) and not _edge_fade(flat_F, a, b)
                 and not _light_change(frames_FHW3, grey_Fhw, max(a - 1, 0), min(b + 1, len(grey_Fhw) - 1), cfg)]
        # A "cut" inside (or at the edge of) a gradual transition is one of its steps.
        cuts = [c for c in cuts if not any(a <= c[0] <= b + 1 for a, b, _ in spans)]
        cuts += [((a + b) // 2, s + 1.0, "gradual") for a, b, s in spans]  # transitions outrank cuts nearby
    cuts = _drop_flashes(cuts, hist_FB, grey_Fhw, min_len, cfg)
    cuts = [c for c in cuts if c[2] != "cut" or not _light_change(frames_FHW3, grey_Fhw, c[0] - 1, c[0], cfg)]
    bounds = _enforce_min_length(sorted(cuts), len(frames_FHW3), min_len)
    starts = [(0, "start")] + [(i, kind) for i, _, kind in bounds]
    ends = [i for i, _ in starts[1:]] + [len(frames_FHW3)]
    return [Shot(s, e, s / fps, e / fps, kind) for (s, kind), e in zip(starts, ends)]


def _merge_fades(gradual: list[tuple[int, float, int]], flat_F: np.ndarray, max_gap: int
                 ) -> list[tuple[int, int, float]]:
    """Gradual transitions (centre, strength, half-width) as spans (first, last frame, strength). A
    fade out to a flat frame (black, white) and the fade in after it are one transition: spans at
    most max_gap apart with a flat frame between (flat_F) are joined."""
    out: list[tuple[int, int, float]] = []
    for c, strength, k in sorted(gradual):
        a, b = c - k, c + k
        if out and a - out[-1][1] <= max_gap:
            # the flat frame must lie where the two meet (from the first's end to the second's start),
            # not anywhere in them: a fade in at the start and a fade out at the end of one shot stay apart
            lo, hi = sorted((out[-1][1], a))
            if flat_F[max(lo, 0):hi + 1].any():
                prev = out.pop()
                out.append((prev[0], b, max(prev[2], strength)))
                continue
        out.append((a, b, strength))
    return out


def _edge_fade(flat_F: np.ndarray, a: int, b: int) -> bool:
    """A fade in from a flat frame (black) with only flat frames before it, or a fade out with only flat
    frames after it: the clip's own opening or ending, with no shot on the other side to be a boundary to."""
    return bool(flat_F[:a + 1].all() or flat_F[b:].all())


def _matched_levels(b_hw: np.ndarray, a_hw: np.ndarray) -> np.ndarray:
    """b's grey levels mapped onto a's by rank (histogram matching): each level of b takes the mean of the levels
    of a at the same ranks. Any monotone change of light (gain, offset, gamma, highlights clipping) is undone."""
    levels, inverse, counts = np.unique(b_hw, return_inverse=True, return_counts=True)
    ends = np.cumsum(counts)
    sums = np.concatenate([[0.0], np.cumsum(np.sort(a_hw, axis=None), dtype=np.float64)])
    return ((sums[ends] - sums[ends - counts]) / counts)[inverse].reshape(b_hw.shape).astype(np.float32)


def _light_change(frames_FHW3: np.ndarray, grey_Fhw: np.ndarray, p: int, q: int, cfg: ShotConfig) -> bool:
    """Whether frame q is frame p under other light (auto-exposure, a lamp switched on, a cloud): the colour
    balance (each channel's share of the mean colour) stays within exposure_balance, and once q's grey levels
    are matched to p's (_matched_levels), what no move of shift_radius pixels explains stays under
    exposure_floor and under exposure_share of what it was unmatched (a cut that keeps the backdrop differs
    little either way: matching must be what makes the two alike). A flat frame (a fade's black) is no picture
    to match."""
    a, b = grey_Fhw[p], grey_Fhw[q]
    if min(float(a.std()), float(b.std())) < cfg.flat_std:
        return False
    mean_a, mean_b = (frames_FHW3[i].reshape(-1, 3).mean(axis=0) + 1.0 for i in (p, q))
    if float(np.abs(mean_a / mean_a.sum() - mean_b / mean_b.sum()).sum()) > cfg.exposure_balance:
        return False   # other colours, not other light (a night sky and a day sky are both gradients)
    after = float(compensated_scores(np.stack([a, _matched_levels(b, a)]), cfg.shift_radius)[1])
    before = float(compensated_scores(np.stack([a, b]), cfg.shift_radius)[1])
    return after < cfg.exposure_floor and after < cfg.exposure_share * before


def _drop_flashes(cuts: list[tuple[int, float, str]], hist_FB: np.ndarray, grey_Fhw: np.ndarray, min_len: int,
                  cfg: ShotConfig) -> list[tuple[int, float, str]]:
    """Leave out the two "cuts" of a flash (a camera flash, a lightning strike, a few white frames): two
    hard cuts under a minimum shot length apart, after which the picture is again the one before the first
    (the frames either side differ far less than either jump did). A brief insert of other footage, whose
    last frame does not match the frame before it, stays."""
    hard = sorted(c for c in cuts if c[2] == "cut")
    flash: set[int] = set()
    # every two cuts closer than a minimum shot, not only neighbours: a flash that fades over its frames adds a
    # small step between its two jumps ("cuts" at the flash, inside it and after it)
    for n, (i, si, _) in enumerate(hard):
        for j, sj, _ in hard[n + 1:]:
            if j - i >= min_len:
                break
            back = _pair_score(hist_FB[i - 1], hist_FB[j], grey_Fhw[i - 1], grey_Fhw[j], cfg)
            if back < cfg.flash_return * min(si, sj):
                flash |= {c[0] for c in hard if i <= c[0] <= j}
    return [c for c in cuts if c[0] not in flash]


def _enforce_min_length(bounds: list[tuple[int, float, str]], F: int, min_len: int) -> list[tuple[int, float, str]]:
    """Drop the weaker of two boundaries closer than min_len frames, and boundaries within
    min_len of either end of the clip."""
    kept: list[tuple[int, float, str]] = []
    for b in sorted(bounds, key=lambda x: -x[1]):  # strongest first
        if b[0] < min_len or F - b[0] < min_len:
            continue
        if all(abs(b[0] - k[0]) >= min_len for k in kept):
            kept.append(b)
    return sorted(kept)


# ---- descriptors measured from pixels ----

@dataclass
class DescribeConfig:
    max_frames: int = 16             # frames sampled evenly from the shot for colours and flow
    flow_width: int = 160            # frames are downscaled to this width for optical flow
    flow_pairs_per_s: float = 10.0   # flow is measured between frames 1/this seconds apart, or closer where the
    flow_reach: float = 0.08         # picture moves further than this share of its width between them
    short_pair_gain: float = 2.0     # ... and a pair one new frame apart replaces one that reads this many times slower
    kmeans_k: int = 5                # colour clusters in Lab
    kmeans_runs: int = 3             # ... in this many k-means runs, their shares averaged
    colour_pixels: int = 6000        # pixels sampled for k-means
    min_colour_share: float = 0.12   # colours covering less of the frame are not named
    pan_thresh: float = 0.05         # camera translation (frame widths per second) that counts as a pan
    pan_against: float = 0.25        # ... when at most this share of the flow pairs moves the other way
    zoom_thresh: float = 0.05        # radial scale change per second that counts as a zoom
    still_thresh: float = 0.005      # object motion (frame widths per second) below this is "still"


# Colour names by hue angle in OKLab (a, b) for chromatic colours: (upper bound in degrees, name). OKLab, not
# CIE Lab, for the hue: CIE Lab bends blue towards purple (pure blue, navy and mediumblue sit at 306 deg there,
# beside mediumpurple at 306 and rebeccapurple at 312) and yellow towards green (103 deg, beside olive-green);
# OKLab's hue is close to perceived hue, and the CSS/X11 colour families fall into separate bands: blues
# 220-290 deg (pure blue 264, slateblue 286), purples 297-330, yellows 84-110, greens 118-170.
_HUE_NAMES = ((15, "pink"), (45, "red"), (80, "orange"), (115, "yellow"), (175, "green"),
              (215, "cyan"), (292, "blue"), (340, "purple"), (360, "pink"))

# sRGB (linear) -> LMS and LMS^(1/3) -> OKLab (Ottosson, 2020).
_OKLAB_M1 = np.array([[0.4122214708, 0.5363325363, 0.0514459929],
                      [0.2119034982, 0.6806995451, 0.1073969566],
                      [0.0883024619, 0.2817188376, 0.6299787005]])
_OKLAB_M2 = np.array([[0.2104542553, 0.7936177850, -0.0040720468],
                      [1.9779984951, -2.4285922050, 0.4505937099],
                      [0.0259040371, 0.7827717662, -0.8086757660]])


def _oklab_hue(rgb01: np.ndarray) -> float:
    """Hue angle in degrees (0..360) of an sRGB colour with channels in [0, 1], in OKLab."""
    c = np.clip(np.asarray(rgb01, dtype=np.float64).reshape(3), 0.0, 1.0)
    linear = np.where(c <= 0.04045, c / 12.92, ((c + 0.055) / 1.055) ** 2.4)
    _, a, b = _OKLAB_M2 @ np.cbrt(_OKLAB_M1 @ linear)
    return math.degrees(math.atan2(b, a)) % 360


def colour_name(rgb: tuple[float, float, float] | np.ndarray) -> str:
    """A plain colour name for an RGB triple (0-255): greys by lightness, others by hue."""
    px = np.asarray(rgb, dtype=np.float32).reshape(1, 1, 3) / 255.0
    L, a, b = cv2.cvtColor(px, cv2.COLOR_RGB2Lab).reshape(3)
    return _lab_name(float(L), float(a), float(b))


def _lab_name(L: float, a: float, b: float) -> str:
    """Name of a CIE Lab colour (OpenCV float Lab: L 0..100): grey levels and brown by Lab lightness and
    chroma, hues by OKLab hue angle."""
    chroma = math.hypot(a, b)
    if chroma < 12 or (L < 22 and chroma < 20):
        return "black" if L < 22 else "white" if L > 85 else "grey"
    rgb01 = cv2.cvtColor(np.array([[[L, a, b]]], dtype=np.float32), cv2.COLOR_Lab2RGB).reshape(3)
    hue = _oklab_hue(rgb01)
    name = next(n for bound, n in _HUE_NAMES if hue < bound)
    if name in ("orange", "red", "yellow") and L < 45 and chroma < 50:
        return "brown"
    if name == "red" and L > 70:
        return "pink"
    return name


def brightness_word(level: float) -> str:
    """Words for mean lightness in [0, 1]."""
    return "dark" if level < 0.25 else "dim" if level < 0.42 else "bright" if level > 0.62 else "moderately lit"


def dominant_colours(frames_FHW3: np.ndarray, cfg: DescribeConfig | None = None,
                     seed: int = 0) -> list[tuple[str, float]]:
    """[(colour name, share of pixels)], largest first: k-means in Lab over sampled pixels, clusters
    named and merged by name, the shares averaged over `kmeans_runs` runs (a cluster whose centre sits near
    the border of two names, dark green and black, takes one name in one run and the other in the next: a
    3% logo or a 2-pixel crop flipped a colour in or out of the caption); names under `min_colour_share` are
    left out."""
    cfg = cfg or DescribeConfig()
    rng = np.random.default_rng(seed)
    sample_F = _sample(frames_FHW3, cfg.max_frames)
    lab = [cv2.cvtColor(_small(f, cfg.flow_width).astype(np.float32) / 255.0, cv2.COLOR_RGB2Lab).reshape(-1, 3)
           for f in sample_F]
    lab_N3 = np.concatenate(lab)
    lab_N3 = lab_N3[rng.choice(len(lab_N3), size=min(cfg.colour_pixels, len(lab_N3)), replace=False)]
    k = min(cfg.kmeans_k, len(np.unique(lab_N3.round(1), axis=0)))
    runs = []
    if k <= 1:
        runs.append((lab_N3.mean(axis=0, keepdims=True), np.zeros(len(lab_N3), dtype=np.int32)))
    else:
        criteria = (cv2.TERM_CRITERIA_EPS + cv2.TERM_CRITERIA_MAX_ITER, 20, 0.5)
        for run in range(cfg.kmeans_runs):
            cv2.setRNGSeed(seed + run)
            _, labels, centres = cv2.kmeans(lab_N3.astype(np.float32), k, None, criteria, 2, cv2.KMEANS_PP_CENTERS)
            runs.append((centres, labels.ravel()))
    shares: dict[str, float] = {}
    for centres, labels in runs:
        for c, centre in enumerate(centres):
            name = _lab_name(*map(float, centre))
            shares[name] = shares.get(name, 0.0) + float((labels == c).mean()) / len(runs)
    ranked = sorted(shares.items(), key=lambda kv: -kv[1])
    named = [(n, round(s, 3)) for n, s in ranked if s >= cfg.min_colour_share]
    return named or [(ranked[0][0], round(ranked[0][1], 3))]


def _sample(frames_FHW3: np.ndarray, n: int) -> np.ndarray:
    idx = np.unique(np.linspace(0, len(frames_FHW3) - 1, min(n, len(frames_FHW3))).round().astype(int))
    return frames_FHW3[idx]


@dataclass
class FlowSummary:
    pan_x: float                     # camera translation of the content, frame widths per second (+ right)
    pan_y: float                     # ... frame heights per second (+ down)
    zoom: float                      # radial scale change of the content per second (+ = growing)
    motion: float                    # object motion left after the camera's part, frame widths per second
    motion_x: float                  # mean direction of that motion (+ right), frame widths per second
    motion_y: float                  # (+ down)
    coherence: float                 # |mean motion vector| / mean |motion|, 0..1 (1 = all one way)


def _run_starts(grey_F: list[np.ndarray], tol: float = 8, share: float = 0.001) -> np.ndarray:
    """For each frame, the index of the first frame of the run of repeats it belongs to: a frame repeats the
    run's first frame when fewer than `share` of its pixels differ from it by more than `tol` grey levels (of
    the frames' scale: 8 of 255, or 8 / 255 of 1).
    Animation held on twos or threes, and variable-rate footage re-timed to a constant rate, repeat frames;
    compared with the run's first frame (not the previous one), slow motion still starts new runs."""
    first_F = np.zeros(len(grey_F), dtype=np.int64)
    h = 0
    for j in range(1, len(grey_F)):
        if float((cv2.absdiff(grey_F[j], grey_F[h]) > tol).mean()) >= share:
            h = j
        first_F[j] = h
    return first_F


def flow_summary(frames_FHW3: np.ndarray, fps: float, cfg: DescribeConfig | None = None) -> FlowSummary:
    """Camera (global translation and zoom) and object motion from Farneback flow between sampled frames."""
    cfg = cfg or DescribeConfig()
    F = len(frames_FHW3)
    none = FlowSummary(0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0)
    if F < 2:
        return none
    grey_F = [cv2.cvtColor(np.ascontiguousarray(_small(f, cfg.flow_width)), cv2.COLOR_RGB2GRAY) for f in frames_FHW3]
    # Pairs at least `step` frames apart (about a tenth of a second: slow motion moves whole pixels, fast
    # motion stays within Farneback's pyramid reach), spread over the shot. Both frames of a pair are the first
    # of a run of repeated frames, each pair timed by its own gap: a pair inside one held picture (animation on
    # threes, a re-timed variable-rate clip) would read as no motion, and a pair from the middle of a run to
    # the next would get the wrong time.
    step = min(F - 1, max(1, round(fps / cfg.flow_pairs_per_s)))
    new_N = np.flatnonzero(_run_starts(grey_F) == np.arange(F))      # first frames of runs, ascending
    step = _within_reach(grey_F, new_N, step, cfg.flow_reach * grey_F[0].shape[1])
    later_N = np.searchsorted(new_N, new_N + step)                  # index into new_N of each one's partner
    ok_N = later_N < len(new_N)
    if ok_N.any():
        firsts_P, seconds_P = new_N[ok_N], new_N[later_N[ok_N]]
    elif len(new_N) > 1:
        # No two run starts `step` apart (a short shot whose move ends before it holds): the first and the last
        # run start, timed by their gap.
        firsts_P, seconds_P = new_N[:1], new_N[-1:]
    else:
        return none  # a single run: one picture throughout
    pick = np.unique(np.linspace(0, len(firsts_P) - 1, min(cfg.max_frames, len(firsts_P))).round().astype(int))
    rows = []
    for s, e in zip(firsts_P[pick], seconds_P[pick]):
        a, b = grey_F[s], grey_F[e]
        flow_hw2 = cv2.calcOpticalFlowFarneback(a, b, None, *FARNEBACK)
        row = np.array(_pair_motion(a, b, flow_hw2)) * fps / (e - s)   # per second
        n = int(np.searchsorted(new_N, s + 1))
        if n < len(new_N) and new_N[n] < e:
            # An object moving further than the trackers reach between the pair's frames reads slow and without
            # direction (whole-frame moves are kept in reach by _within_reach, objects are not): the pair from
            # its first frame to the next new one is taken instead when it reads `short_pair_gain` times faster.
            c = grey_F[new_N[n]]
            short = np.array(_pair_motion(a, c, cv2.calcOpticalFlowFarneback(a, c, None, *FARNEBACK)))
            if short[3] * fps / (new_N[n] - s) > cfg.short_pair_gain * row[3]:
                row = short * fps / (new_N[n] - s)
        rows.append(row)
    rows_P7 = np.array(rows)
    # Camera: the median pair (robust to a few bad pairs), a translation only where few pairs move the other way
    # (a shaking hand-held camera goes back and forth: no pan; a pair the trackers lost reads 0, no vote against);
    # object motion: the mean over pairs.
    tx, ty, zoom = np.median(rows_P7[:, :3], axis=0)
    tx, ty = (m if np.mean(np.sign(rows_P7[:, a]) == -np.sign(m)) <= cfg.pan_against else 0.0
              for a, m in ((0, tx), (1, ty)))
    resid, rx, ry = rows_P7[:, 3:6].mean(axis=0)
    coh = float(np.hypot(rx, ry) / max(float(rows_P7[:, 6].mean()), 1e-6))
    h, w = grey_F[0].shape
    return FlowSummary(pan_x=float(tx / w), pan_y=float(ty / h), zoom=float(zoom), motion=float(resid / w),
                       motion_x=float(rx / w), motion_y=float(ry / w), coherence=float(coh))


def _within_reach(grey_F: list[np.ndarray], new_N: np.ndarray, step: int, reach_px: float, probes: int = 5) -> int:
    """The flow pairs' step, shortened so that the picture moves at most `reach_px` between a pair's frames:
    a fast pan (a whip pan moves a frame width in half a second) goes past the trackers' pyramid reach over a
    tenth of a second and would read as a still camera. The move per frame is the median whole-frame shift
    (phase correlation) between neighbouring run starts at a few places in the shot, of the pairs whose
    correlation peak is clear (a flash or a fade's black frame has none)."""
    if step <= 1 or len(new_N) < 2:
        return step
    moves = []
    for n in np.unique(np.linspace(0, len(new_N) - 2, probes).round().astype(int)):
        a, b = new_N[n], new_N[n + 1]
        (dx, dy), peak = cv2.phaseCorrelate(grey_F[a].astype(np.float64), grey_F[b].astype(np.float64))
        if peak >= 0.2:
            moves.append(math.hypot(dx, dy) / (b - a))
    per_frame = float(np.median(moves)) if moves else 0.0
    return step if per_frame * step <= reach_px else max(1, int(reach_px // per_frame))


def camera_model(a_hw: np.ndarray, b_hw: np.ndarray) -> tuple[float, float, float]:
    """(tx, ty, zoom) of the camera between two grey frames, in pixels and relative scale change:
    corners tracked with pyramidal Lucas-Kanade, a similarity transform fitted with RANSAC. The fit
    counts as the camera only when its inliers spread over the frame (a lone moving object's corners
    do not); otherwise the camera is taken as still (flat backgrounds carry no camera evidence)."""
    h, w = a_hw.shape
    pts = cv2.goodFeaturesToTrack(a_hw, maxCorners=200, qualityLevel=0.01, minDistance=4)
    if pts is None or len(pts) < 8:
        return 0.0, 0.0, 0.0
    nxt, status, _ = cv2.calcOpticalFlowPyrLK(a_hw, b_hw, pts, None, winSize=(15, 15), maxLevel=3)
    good = status.ravel() == 1
    src, dst = pts[good].reshape(-1, 2), nxt[good].reshape(-1, 2)
    if len(src) < 8:
        return 0.0, 0.0, 0.0
    m, inliers = cv2.estimateAffinePartial2D(src, dst, method=cv2.RANSAC, ransacReprojThreshold=1.0)
    if m is None:
        return 0.0, 0.0, 0.0
    inl = src[inliers.ravel() == 1]
    spread = lambda p: p[:, 0].std() >= 0.2 * w and p[:, 1].std() >= 0.12 * h  # noqa: E731
    if len(inl) < max(8, 0.3 * len(src)) or not spread(inl):
        return 0.0, 0.0, 0.0
    # A large object moving over a still scene (a vehicle filling half the shot) can out-vote the scene's
    # corners, or RANSAC fits a compromise of both; when corners that moved < 0.5 px, spread over the frame,
    # are at least half as many as the inliers and a still camera explains them better than the fit does,
    # the camera is still. (In a slow zoom most corners also move < 0.5 px, but just as the zoom predicts.)
    moved_N = np.hypot(*(dst - src).T)
    misfit_N = np.hypot(*(dst - (src @ m[:, :2].T + m[:, 2])).T)
    still_N = moved_N < 0.5
    if (still_N.sum() >= max(8, 0.5 * len(inl)) and spread(src[still_N])
            and np.median(moved_N[still_N]) < np.median(misfit_N[still_N])):
        return 0.0, 0.0, 0.0
    scale = float(np.hypot(m[0, 0], m[1, 0]))
    # Translation of the frame centre (the similarity's own translation is about the origin).
    cx, cy = (w - 1) / 2, (h - 1) / 2
    tx = float(m[0, 0] * cx + m[0, 1] * cy + m[0, 2] - cx)
    ty = float(m[1, 0] * cx + m[1, 1] * cy + m[1, 2] - cy)
    return tx, ty, scale - 1.0


# The residual flow's noise level is read at this percentile (not the median: an object covering over half
# the frame while the camera stands still would raise the bar above its own speed and count as no motion).
MOTION_NOISE_PERCENTILE = 20
# Farneback's pyramid scale, levels, window, iterations, polynomial size and sigma, flags
FARNEBACK = (0.5, 3, 15, 3, 5, 1.2, 0)


def _pair_motion(a_hw: np.ndarray, b_hw: np.ndarray, flow_hw2: np.ndarray) -> tuple[float, ...]:
    """(tx, ty, zoom, residual speed, residual mean x, y, residual speed) of one frame pair, in pixels."""
    h, w = flow_hw2.shape[:2]
    u, v = flow_hw2[..., 0], flow_hw2[..., 1]
    tx, ty, zoom = camera_model(a_hw, b_hw)
    ys, xs = np.mgrid[0:h, 0:w].astype(np.float32)
    dx, dy = xs - (w - 1) / 2, ys - (h - 1) / 2
    ru, rv = u - tx - zoom * dx, v - ty - zoom * dy
    mag = np.hypot(ru, rv)
    moving = mag > max(0.5, 3 * float(np.percentile(mag, MOTION_NOISE_PERCENTILE)))
    if (tx, ty, zoom) != (0.0, 0.0, 0.0) and moving.any():
        moving &= ~_camera_explains(a_hw, b_hw, flow_hw2, xs + tx + zoom * dx, ys + ty + zoom * dy)
    if moving.mean() < 0.002:
        return tx, ty, zoom, 0.0, 0.0, 0.0, 0.0
    # Speeds are the moving pixels' means weighted by how much of the frame moves, so that they
    # average over pairs; the last entry is the mean speed, the denominator of the coherence.
    share = float(moving.mean())
    speed = float(mag[moving].mean()) * share
    return tx, ty, zoom, speed, float(ru[moving].mean()) * share, float(rv[moving].mean()) * share, speed


def _camera_explains(a_hw: np.ndarray, b_hw: np.ndarray, flow_hw2: np.ndarray, cam_x_hw: np.ndarray,
                     cam_y_hw: np.ndarray, window: int = 9, margin: float = 2.0) -> np.ndarray:
    """Where the camera's move alone predicts frame b from frame a as well as the flow does (around each pixel),
    or where the camera's move brings in content from outside frame a (the strip a pan uncovers): no object
    motion there. Optical flow is blind along flat or one-directional texture (sky, walls, a photo's smooth
    areas) and reports about zero there, which against a moving camera reads as motion opposite to it."""
    h, w = a_hw.shape
    ys, xs = np.mgrid[0:h, 0:w].astype(np.float32)
    a = a_hw.astype(np.float32)
    b = b_hw.astype(np.float32)
    by_cam = cv2.remap(b, cam_x_hw.astype(np.float32), cam_y_hw.astype(np.float32), cv2.INTER_LINEAR,
                       borderMode=cv2.BORDER_REPLICATE)
    by_flow = cv2.remap(b, xs + flow_hw2[..., 0], ys + flow_hw2[..., 1], cv2.INTER_LINEAR,
                        borderMode=cv2.BORDER_REPLICATE)
    err_cam = cv2.blur(np.abs(by_cam - a), (window, window))
    err_flow = cv2.blur(np.abs(by_flow - a), (window, window))
    # Pixels near where the camera fails count as moving too: a flat-coloured object's inside is explained by
    # any move, its edges are not.
    unexplained = cv2.dilate((err_cam > err_flow + margin).astype(np.uint8), np.ones((2 * window - 1,) * 2, np.uint8))
    outside = (cam_x_hw < 0) | (cam_x_hw > w - 1) | (cam_y_hw < 0) | (cam_y_hw > h - 1)
    return (unexplained == 0) | (cv2.dilate(outside.astype(np.uint8), np.ones((3, 3), np.uint8)) > 0)


def _direction(x: float, y: float) -> str:
    """right/left/up/down for an image-space vector (+y down)."""
    if abs(x) >= abs(y):
        return "right" if x > 0 else "left"
    return "down" if y > 0 else "up"


@dataclass
class ShotDescriptors:
    brightness: float                # mean Lab lightness, 0..1
    brightness_word: str             # dark / dim / moderately lit / bright
    colours: list[tuple[str, float]]  # dominant colours, (name, share of pixels), largest first
    camera: str                      # static / pan_left / pan_right / tilt_up / tilt_down / zoom_in / zoom_out
    motion_amount: float             # object motion, frame widths per second (camera removed)
    motion_word: str                 # still / slight / moderate / strong
    motion_direction: str            # left / right / up / down / mixed / none
    flow: FlowSummary = field(repr=False)

    def phrase(self) -> str:
        """The descriptors in words, e.g. "a bright scene, mostly green and blue, camera pans left,
        strong motion to the right"."""
        names = [n for n, _ in self.colours[:3]]
        colours = names[0] if len(names) == 1 else ", ".join(names[:-1]) + " and " + names[-1]
        camera = {"static": "static camera", "pan_left": "camera pans left", "pan_right": "camera pans right",
                  "tilt_up": "camera tilts up", "tilt_down": "camera tilts down",
                  "zoom_in": "camera zooms in", "zoom_out": "camera zooms out"}[self.camera]
        if self.motion_word == "still":
            motion = "no motion"
        elif self.motion_direction in ("mixed", "none"):
            motion = f"{self.motion_word} motion"
        else:
            motion = f"{self.motion_word} motion to the {self.motion_direction}" if self.motion_direction in (
                "left", "right") else f"{self.motion_word} motion {self.motion_direction}wards"
        return f"a {self.brightness_word} scene, mostly {colours}, {camera}, {motion}"

    def to_dict(self) -> dict:
        d = asdict(self)
        d["colours"] = [{"name": n, "share": s} for n, s in self.colours]
        return d


def camera_movement(flow: FlowSummary, cfg: DescribeConfig | None = None) -> str:
    """Camera class from the global flow. Content moving right means the camera pans left."""
    cfg = cfg or DescribeConfig()
    if abs(flow.zoom) >= cfg.zoom_thresh and abs(flow.zoom) >= 0.5 * max(abs(flow.pan_x), abs(flow.pan_y)):
        return "zoom_in" if flow.zoom > 0 else "zoom_out"
    if max(abs(flow.pan_x), abs(flow.pan_y)) >= cfg.pan_thresh:
        if abs(flow.pan_x) >= abs(flow.pan_y):
            return "pan_left" if flow.pan_x > 0 else "pan_right"
        return "tilt_up" if flow.pan_y > 0 else "tilt_down"
    return "static"


def content_box(frames_FHW3: np.ndarray, dark: int = 64, black: int = 32, uniform: float = 0.8,
                spread: int = 12, min_bar: float = 0.02, min_keep: float = 0.5) -> tuple[int, int, int, int]:
    """(top, bottom, left, right) rows/columns of the picture inside letterbox or pillarbox bars: edge rows /
    columns of one dark level (grey median under `dark`, at least `uniform` of their pixels within `spread`
    of it: black or dark grey bars, subtitles burned into them allowed) in every sampled frame, that level
    the same in all of them; a bar not under `black` only as one of a pair of one width. Bars thinner than
    `min_bar` of a side are kept, and when cropping would leave less than `min_keep` of a side (a night scene,
    a black clip) nothing is cropped."""
    sample_NHW = np.stack([cv2.cvtColor(np.ascontiguousarray(f), cv2.COLOR_RGB2GRAY) for f in _sample(frames_FHW3, 8)])

    def bar_lines(lines_NLP: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """[N frames, L lines, P pixels of a line] -> [L] each: bar lines, dark lines (median under `dark`),
        black lines (median under `black`)."""
        level_NL = np.median(lines_NLP, axis=2)
        near_NL = (np.abs(lines_NLP.astype(np.int16) - level_NL[..., None]) <= spread).mean(axis=2)
        steady_L = np.ptp(level_NL, axis=0) <= spread / 2
        dark_L = (level_NL < dark).all(axis=0)
        return dark_L & (near_NL >= uniform).all(axis=0) & steady_L, dark_L, (level_NL < black).all(axis=0)

    rows_H, dark_rows_H, black_rows_H = bar_lines(sample_NHW)
    cols_W, dark_cols_W, black_cols_W = bar_lines(sample_NHW.transpose(0, 2, 1))
    H, W = rows_H.size, cols_W.size

    def edges(line: np.ndarray, dark_line: np.ndarray, black_line: np.ndarray, n: int) -> tuple[int, int]:
        lo = int(np.argmin(line)) if not line.all() else n
        hi = n - int(np.argmin(line[::-1])) if not line.all() else 0
        # bars come in pairs of one width: the narrower one found reaches as far as the other where its lines
        # are dark throughout (subtitles burned into a bar make its lines no longer of one level)
        if hi > n - lo and dark_line[n - lo:hi].all():
            hi = n - lo
        elif lo < n - hi and dark_line[lo:n - hi].all():
            lo = n - hi
        # a grey bar without its pair of one width is dark scenery (a night sky, a wall): only black ones stand alone
        if abs(lo - (n - hi)) > max(2, 0.1 * max(lo, n - hi)):
            lo = lo if black_line[:lo].all() else 0
            hi = hi if black_line[hi:].all() else n
        lo = lo if lo >= min_bar * n else 0
        hi = hi if n - hi >= min_bar * n else n
        return (lo, hi) if hi - lo >= min_keep * n else (0, n)
    top, bottom = edges(rows_H, dark_rows_H, black_rows_H, H)
    left, right = edges(cols_W, dark_cols_W, black_cols_W, W)
    return top, bottom, left, right


def describe_shot(frames_FHW3: np.ndarray, fps: float, cfg: DescribeConfig | None = None) -> ShotDescriptors:
    """Brightness, dominant colours, camera movement and object motion of one shot, from its pixels (the
    picture inside any letterbox / pillarbox bars, which are not part of the scene)."""
    cfg = cfg or DescribeConfig()
    _check_frames(frames_FHW3)
    top, bottom, left, right = content_box(frames_FHW3)
    frames_FHW3 = frames_FHW3[:, top:bottom, left:right]
    sample_F = _sample(frames_FHW3, cfg.max_frames)
    lightness = float(np.mean([cv2.cvtColor(_small(f, cfg.flow_width), cv2.COLOR_RGB2Lab)[..., 0].mean()
                               for f in sample_F]) / 255.0)
    flow = flow_summary(frames_FHW3, fps, cfg)
    amount = flow.motion
    word = ("still" if amount < cfg.still_thresh else "slight" if amount < 0.04
            else "moderate" if amount < 0.12 else "strong")
    if word == "still":
        direction = "none"
    elif flow.coherence < 0.5:
        direction = "mixed"
    else:
        direction = _direction(flow.motion_x, flow.motion_y)
    return ShotDescriptors(brightness=round(lightness, 3), brightness_word=brightness_word(lightness),
                           colours=dominant_colours(frames_FHW3, cfg), camera=camera_movement(flow, cfg),
                           motion_amount=round(amount, 4), motion_word=word, motion_direction=direction, flow=flow)
