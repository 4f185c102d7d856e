"""Evaluation of the video studio on held-out synthetic data (`moe-suite video eval --json`).

- corpus_bleu: BLEU-4 written here (corpus-level, clipped n-gram precisions, brevity penalty).
- check_scene: an attribute checker independent of the captioner, measured from pixels: each
  object's colour is found against the rendered background (allowing a pixel of misalignment, and
  its clouds and stars placed by the best-matching scene seed) and its centre and area are tracked
  along the path that the world's geometry gives its motion under the scene's camera.
- evaluate: held-out prompts -> studio.generate_video -> captioner and checker must both confirm
  the script; captioner accuracy and BLEU-4 on held-out rendered clips; cut accuracy.
"""
from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence

import cv2
import numpy as np

from . import world


def _ngrams(words: Sequence[str], n: int) -> Counter:
    return Counter(tuple(words[i:i + n]) for i in range(len(words) - n + 1))


def corpus_bleu(hypotheses: Sequence[Sequence[str]], references: Sequence[Sequence[Sequence[str]]],
                max_n: int = 4) -> float:
    """Corpus-level BLEU (Papineni et al. 2002) of tokenised hypotheses, each with one or more
    tokenised references: n-gram counts clipped by the most any one reference holds, summed over
    the corpus; uniform weights over n = 1..max_n; brevity penalty exp(1 - r/c) when the total
    hypothesis length c is below r, the sum of the reference lengths closest to each hypothesis.
    Returns 0.0 when some order has no matches (no smoothing)."""
    if len(hypotheses) != len(references):
        raise ValueError(f"{len(hypotheses)} hypotheses but {len(references)} reference sets")
    matched, possible = [0] * max_n, [0] * max_n
    hyp_len = ref_len = 0
    for hyp, refs in zip(hypotheses, references):
        if not refs:
            raise ValueError("every hypothesis needs at least one reference")
        hyp_len += len(hyp)
        ref_len += min((abs(len(r) - len(hyp)), len(r)) for r in refs)[1]
        for n in range(1, max_n + 1):
            counts = _ngrams(hyp, n)
            most = Counter()
            for r in refs:
                most |= _ngrams(r, n)
            matched[n - 1] += sum(min(c, most[g]) for g, c in counts.items())
            possible[n - 1] += max(len(hyp) - n + 1, 0)
    if hyp_len == 0 or min(matched) == 0:
        return 0.0
    log_precision = sum(math.log(m / p) for m, p in zip(matched, possible)) / max_n
    brevity = 1.0 if hyp_len > ref_len else math.exp(1 - ref_len / hyp_len)
    return brevity * math.exp(log_precision)


# ---- an attribute checker independent of the captioner: measured from pixels ----

CHECK_FRAMES = 8                     # frames per scene the checker measures
FG_DE = 12.0                         # Lab distance from the rendered background of a foreground pixel
COLOUR_DE = 28.0                     # Lab distance within which a pixel has an object's colour
MIN_AREA = 0.0002                    # share of the frame an object's colour must cover to be present
PATH_TOL = 0.08                      # mean centroid error (frame fractions) allowed along the path
LOG_AREA_TOL = 0.5                   # allowed error of log(area at end / area at start)
ANCHOR_AREA_SHARE = 0.3              # a frame anchors the path once area / expected area reaches this share of its median
MIN_PART = 0.25                      # colour regions smaller than this share of the largest are not the object,
MIN_REGION = 0.0001                  # ... nor those under this share of the frame (a few pixels)
BG_RADIUS = 1                        # pixels: within the rendered background's colours this close by is background


def to_lab(rgb_HW3: np.ndarray) -> np.ndarray:
    """[H, W, 3] float32 CIE Lab of uint8 RGB."""
    return cv2.cvtColor(rgb_HW3.astype(np.float32) / 255.0, cv2.COLOR_RGB2Lab)


def backdrop_seed(frames_FHW3: np.ndarray, scene, idx: np.ndarray) -> int:
    """Of the seeds the world gives a script's backdrops (scene i of a script: seed i), the one whose
    stars and clouds the sampled frames match best (median absolute difference, which the objects
    hardly move). With another seed, clouds of the scene's own backdrop would be foreground as large
    as a white object, and be tracked instead of it. The world places clouds and stars in fractions of
    the plate, so a clip rendered at any size keeps them in place at the checked size."""
    F, H, W = frames_FHW3.shape[:3]
    best, best_err = 0, np.inf
    for seed in range(world.MAX_SCENES):
        err = float(np.median([np.abs(frames_FHW3[f].astype(np.int16) - bg.astype(np.int16)).mean()
                               for f, bg in zip(idx, world.background_views(scene.background, scene.camera, F,
                                                                            idx, (H, W), seed))]))
        if err < best_err:
            best, best_err = seed, err
    return best


def foreground(lab_HW3: np.ndarray, bg_lab_HW3: np.ndarray, radius: int = BG_RADIUS, de: float = FG_DE) -> np.ndarray:
    """[H, W] bool: pixels farther than `de` (Lab) from every colour between the lowest and the
    highest value, per channel, that the rendered background takes within `radius` pixels. A clip
    rendered at another resolution, resized and encoded puts thin backdrop lines (the beach's foam
    and horizon, the sun's rim) a pixel or two off the checker's own rendering and blends them with
    their neighbours (chroma subsampling); compared pixel to pixel, such a line is foreground, and
    as wide as the frame it outweighs an object of its colour. Objects are many pixels across and
    unlike their surroundings, so their interiors stay foreground."""
    k = np.ones((2 * radius + 1, 2 * radius + 1), np.uint8)
    lo_HW3, hi_HW3 = cv2.erode(bg_lab_HW3, k), cv2.dilate(bg_lab_HW3, k)
    outside_HW3 = np.maximum(lo_HW3 - lab_HW3, 0.0) + np.maximum(lab_HW3 - hi_HW3, 0.0)
    return np.linalg.norm(outside_HW3, axis=2) > de


def _object_regions(mask_HW: np.ndarray) -> np.ndarray:
    """The parts of a colour mask that can be the object: connected regions at least MIN_PART of the
    largest one and MIN_REGION of the frame. Specks of the same colour (stars, foam, cloud edges) are
    left out; so is an object while it is still a speck itself (that frame counts as not seen)."""
    n, labels_HW, stats, _ = cv2.connectedComponentsWithStats(mask_HW.astype(np.uint8), connectivity=8)
    if n <= 1:
        return mask_HW
    areas = stats[1:, cv2.CC_STAT_AREA]
    keep = np.flatnonzero(areas >= max(MIN_PART * areas.max(), MIN_REGION * mask_HW.size)) + 1
    return np.isin(labels_HW, keep)


def _check_frames(frames_FHW3: np.ndarray, scene) -> tuple[np.ndarray, list[tuple[np.ndarray, np.ndarray]]]:
    """(the CHECK_FRAMES sampled frame indices, (frame, rendered backdrop) in Lab at each): what every
    object of a scene is tracked against, computed once per scene."""
    F, H, W = frames_FHW3.shape[:3]
    idx = np.linspace(0, F - 1, min(CHECK_FRAMES, F)).round().astype(int)
    backdrops = world.background_views(scene.background, scene.camera, F, idx, (H, W),
                                       backdrop_seed(frames_FHW3, scene, idx))
    return idx, [(to_lab(frames_FHW3[f]), to_lab(bg)) for f, bg in zip(idx, backdrops)]


def object_track(frames_FHW3: np.ndarray, scene, colour: str,
                 checked: tuple[np.ndarray, list[tuple[np.ndarray, np.ndarray]]] | None = None) -> np.ndarray | None:
    """[CHECK_FRAMES, 3] measured (centre x, centre y as frame fractions, area share) of the
    foreground pixels of `colour`, or None when the colour is absent from too many frames.
    checked: _check_frames(frames_FHW3, scene), when the caller has it already."""
    H, W = frames_FHW3.shape[1:3]
    idx, labs = checked or _check_frames(frames_FHW3, scene)
    target = to_lab(np.array(world.COLOURS[colour], np.uint8).reshape(1, 1, 3))[0, 0]
    rows, missing = [], 0
    for lab, bg_lab in labs:
        fg = foreground(lab, bg_lab)
        mask = _object_regions(fg & (np.linalg.norm(lab - target, axis=2) < COLOUR_DE))
        area = float(mask.mean())
        if area < MIN_AREA:
            missing += 1
            rows.append((np.nan, np.nan, 0.0))
            continue
        ys, xs = np.nonzero(mask)
        rows.append((xs.mean() / W, ys.mean() / H, area))
    if missing > len(idx) // 2:
        return None
    return np.array(rows)


def expected_track(obj, scene, frames: int, anchor_xy: tuple[float, float], anchor: int = 0) -> np.ndarray:
    """[CHECK_FRAMES, 3] where the world's geometry puts `obj` on screen (x, y fractions, squared
    relative size), its path shifted so that at sampled frame `anchor` it is where it was measured
    there (objects start at random places)."""
    idx = np.linspace(0, frames - 1, min(CHECK_FRAMES, frames)).round().astype(int)
    scale_F, shift_F = world.camera_transform(scene.camera, frames)
    lay = world.object_layout(obj.motion, frames, (0.5, 0.5), len(scene.objects))
    # The measured point, back through the camera, in world coordinates; the path moves there.
    f0 = idx[anchor]
    dx = (anchor_xy[0] - 0.5) / scale_F[f0] + 0.5 + shift_F[f0] - lay.cx_F[f0]
    dy = (anchor_xy[1] - 0.5) / scale_F[f0] + 0.5 - lay.cy_F[f0]
    rows = []
    for f in idx:
        sx, sy, half = world.to_screen(lay.cx_F[f] + dx, lay.cy_F[f] + dy, lay.size_F[f], (1, 1),
                                       scale_F[f], shift_F[f])
        rows.append((sx, sy, half * half))
    return np.array(rows)


def background_of(frames_FHW3: np.ndarray, camera: str) -> str:
    """The world background whose rendering (under `camera`) the scene's frames are closest to,
    by median absolute difference over a few frames (objects are small, so the median ignores them)."""
    F, H, W = frames_FHW3.shape[:3]
    idx = np.linspace(0, F - 1, min(3, F)).round().astype(int)
    size = (max(8, H // 4), max(8, W // 4))
    small = [cv2.resize(frames_FHW3[f], size[::-1], interpolation=cv2.INTER_AREA).astype(np.int16) for f in idx]
    best, best_err = None, np.inf
    for name in world.BACKGROUNDS:
        err = float(np.median([np.abs(a - b.astype(np.int16)).mean(axis=2)
                               for a, b in zip(small, world.background_views(name, camera, F, idx, size))]))
        if err < best_err:
            best, best_err = name, err
    return best


def _robust_slope(t_N: np.ndarray, y_N: np.ndarray) -> float:
    """Median of the slopes between every pair of points (Theil-Sen)."""
    i, j = np.triu_indices(len(t_N), k=1)
    return float(np.median((y_N[j] - y_N[i]) / (t_N[j] - t_N[i])))


def check_scene(frames_FHW3: np.ndarray, scene) -> dict[str, bool]:
    """Pixel checks of one scene's frames against what the scene says: the background is the
    nearest rendered one, every object's colour is there, and each moves along the path its motion
    and the camera give (left/right/up/down/bounce by its centre, grow/shrink by its area; still
    and rotate both keep centre and area, so the checker does not tell them apart)."""
    colours_ok = motion_ok = True
    background_ok = background_of(frames_FHW3, scene.camera) == scene.background
    checked = _check_frames(frames_FHW3, scene) if scene.objects else None
    for obj in scene.objects:
        track = object_track(frames_FHW3, scene, obj.colour, checked)
        if track is None:
            colours_ok = motion_ok = False
            continue
        seen = ~np.isnan(track[:, 0])
        # The path is anchored on the first frame where the measured area fits the expected one (its share of the
        # median ratio of the two): in earlier frames a growing object may still be a speck, and a star of its
        # colour is taken for it.
        size_F = expected_track(obj, scene, len(frames_FHW3), (0.5, 0.5))[:, 2]
        ratio_F = np.where(seen, track[:, 2] / size_F, 0.0)
        anchor = int(np.argmax(seen & (ratio_F >= ANCHOR_AREA_SHARE * np.median(ratio_F[seen]))))
        want = expected_track(obj, scene, len(frames_FHW3), (track[anchor, 0], track[anchor, 1]), anchor)
        path_err = float(np.mean(np.hypot(track[seen, 0] - want[seen, 0], track[seen, 1] - want[seen, 1])))
        # Growth only between frames where the object lies wholly inside the picture.
        aspect = frames_FHW3.shape[1] / frames_FHW3.shape[2]
        half_x, half_y = np.sqrt(want[:, 2]) * aspect, np.sqrt(want[:, 2])
        inside = seen & (want[:, 0] - half_x > 0) & (want[:, 0] + half_x < 1) & (want[:, 1] - half_y > 0) & (
            want[:, 1] + half_y < 1)
        got_growth = want_growth = 0.0
        if inside.sum() >= 2:
            t = np.flatnonzero(inside)
            # Theil-Sen slopes: one frame where another object covers part of this one does not decide the growth
            got_growth = _robust_slope(t, np.log(np.maximum(track[t, 2], 1e-9))) * (t[-1] - t[0])
            want_growth = _robust_slope(t, np.log(want[t, 2])) * (t[-1] - t[0])
        if path_err > PATH_TOL or abs(got_growth - want_growth) > LOG_AREA_TOL:
            motion_ok = False
    return {"background": background_ok, "colours": colours_ok, "motion": motion_ok}


# ---- the evaluation ----

def _scene_matches(pred_attributes: dict, scene) -> bool:
    """The captioner's attributes name exactly the scene's objects (shape, colour, motion), its
    background and its camera."""
    want = sorted((o.shape, o.colour, o.motion) for o in scene.objects)
    got = sorted((o["shape"], o["colour"], o["motion"]) for o in pred_attributes.get("objects", []))
    return got == want and pred_attributes.get("background") == scene.background and \
        pred_attributes.get("camera") == scene.camera


def cut_hits(planned: list[int], found: list[int], tolerance: int = 2) -> tuple[int, int]:
    """(planned cuts with a found cut within `tolerance` frames, found cuts matching no planned cut);
    each found cut matches at most one planned cut."""
    free = sorted(found)
    hits = 0
    for p in planned:
        near = [f for f in free if abs(f - p) <= tolerance]
        if near:
            free.remove(min(near, key=lambda f: abs(f - p)))
            hits += 1
    return hits, len(free)


def _rendered_cuts(n: int, rng: np.random.Generator, fps: float, size_hw) -> dict:
    from .shots import detect_shots

    if n == 0:
        return {"cut_accuracy_rendered": None, "false_cuts_per_clip_rendered": None, "rendered_clips": 0}
    hits = planned = extra = 0
    for _ in range(n):
        script = world.sample_script(rng, "test", max_scenes=world.MAX_SCENES)
        frames, cuts = world.render_script(script, fps, size_hw)
        found = [s.start_frame for s in detect_shots(frames, fps)[1:]]
        h, e = cut_hits(cuts, found)
        hits, planned, extra = hits + h, planned + len(cuts), extra + e
    return {"cut_accuracy_rendered": round(hits / max(planned, 1), 4),
            "false_cuts_per_clip_rendered": round(extra / max(n, 1), 3), "rendered_clips": n}


def _checker_reliability(n: int, rng: np.random.Generator, fps: float, size_hw) -> float:
    """The pixel checker's pass rate on ground-truth renders (how often it wrongly rejects)."""
    ok = 0
    for i in range(n):
        scene = world.sample_scene(rng, "test")
        frames = world.render_scene(scene, max(2, int(round(scene.seconds * fps))), size_hw, seed=i)
        ok += all(check_scene(frames, scene).values())
    return round(ok / max(n, 1), 4)


def _generator():
    """studio.generate_video, or (None, why) when it cannot be used here."""
    try:
        from .studio import generate_video
    except ImportError as exc:
        return None, f"skipped: studio.generate_video is not available ({exc})"
    return generate_video, None


def _same_content(a, b) -> bool:
    """Two scenes show the same: objects (shape, colour, motion; in any order), background and camera."""
    return sorted((o.shape, o.colour, o.motion) for o in a.objects) == \
        sorted((o.shape, o.colour, o.motion) for o in b.objects) and (a.background, a.camera) == (b.background, b.camera)


def _plan_matches(got, want) -> bool:
    """The planner's script names the true one: scene count, and per scene its content (_same_content).
    Scene lengths and style are left out."""
    return len(got.scenes) == len(want.scenes) and all(_same_content(g, w) for g, w in zip(got.scenes, want.scenes))


def _judge(generate_video, script, prompt: str, out, captioner, resolution: str, fps: int,
           lexicon: bool = True) -> dict | None:
    """Generate a video from `prompt` and check it against `script` (the script the prompt was written
    from); None when the studio refuses the prompt. FileNotFoundError (no checkpoint) is passed on."""
    import time

    from data_connectors.video import read_video

    from .captioner import caption_video
    from .shots import detect_shots

    t = time.perf_counter()
    total = float(sum(s.seconds for s in script.scenes))
    try:
        # Unstyled: the style is planned but not painted, so pixels can be checked.
        result = generate_video(prompt, seconds=total, resolution=resolution, fps=fps, out=out, apply_style=False,
                                allow_guesses=True, lexicon=lexicon)   # the planner's guess is judged, not the
                                                                       # refusal policy
    except ValueError:
        return None
    seconds = time.perf_counter() - t
    frames, file_fps = read_video(result.path, max_side=320)
    shots = caption_video(frames, file_fps, captioner=captioner) if captioner is not None else None
    found = [s.start_frame for s in detect_shots(frames, file_fps)[1:]]
    plan = list(getattr(result, "cut_frames", []) or [])
    hits, extra = cut_hits(plan, found)
    bounds = [0] + found + [len(frames)]
    same_count = len(bounds) - 1 == len(script.scenes)
    cap_ok = chk_ok = same_count
    plan_ok = len(bounds) - 1 == len(result.script.scenes)
    planned_checks = []
    if plan_ok:  # the generator's fidelity to its own plan (planner errors left out)
        planned_checks = [all(check_scene(frames[bounds[k]:bounds[k + 1]], scene).values())
                          for k, scene in enumerate(result.script.scenes)]
        plan_ok = all(planned_checks)
    if same_count:
        for k, scene in enumerate(script.scenes):
            seg = frames[bounds[k]:bounds[k + 1]]
            # a scene the planner read right was checked just above (the checker reads no scene length)
            same = planned_checks and _same_content(result.script.scenes[k], scene)
            chk_ok = chk_ok and (planned_checks[k] if same else all(check_scene(seg, scene).values()))
            cap_ok = cap_ok and shots is not None and shots[k].source == "world model" and \
                _scene_matches(shots[k].attributes, scene)
    return {"seconds": seconds, "same_count": same_count, "captioner": cap_ok, "checker": chk_ok,
            "both": cap_ok and chk_ok, "fidelity": plan_ok, "planner_exact": _plan_matches(result.script, script),
            "hits": hits, "planned": len(plan), "extra": extra}


def _generated(n_prompts: int, rng: np.random.Generator, captioner, resolution: str, fps: int, log,
               seed: int = 0, lexicon: bool = True) -> dict:
    """Generate videos from held-out prompts and check each against the script it was written from.
    Each held-out script is generated twice: phrased with the held-out wording (the headline figures)
    and with the training wording (keys ending in _train_wording), so that a wording failure of the
    planner is told apart from failures of the rest of the chain (generator, shots, captioner, checker)."""
    import tempfile
    from pathlib import Path

    generate_video, why = _generator()
    if generate_video is None:
        return {"generation": why}
    # Its own generator: the held-out prompts stay those of `rng` alone, whatever is measured beside them.
    train_rng = np.random.default_rng([seed, 1])
    runs: dict[str, list[dict | None]] = {"test": [], "train": []}
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(n_prompts):
            script = world.sample_script(rng, "test")
            prompts = {"test": world.script_to_prompt(script, rng, "test"),
                       "train": world.script_to_prompt(script, train_rng, "train")}
            for wording, prompt in prompts.items():
                try:
                    r = _judge(generate_video, script, prompt, Path(tmp) / f"clip{i}_{wording}.mp4", captioner,
                               resolution, fps, lexicon)
                except FileNotFoundError as exc:  # no planner / generator checkpoint here
                    return {"generation": f"skipped: {exc}"}
                runs[wording].append(r)
                if r is None:  # the studio refused the prompt: counts as inconsistent
                    log(f"prompt {i} ({wording} wording): generation refused: {prompt!r}")
                else:
                    log(f"prompt {i} ({wording} wording): {prompt!r}: scenes "
                        f"{'ok' if r['same_count'] else 'wrong count'}, captioner {'ok' if r['captioner'] else 'no'}, "
                        f"checker {'ok' if r['checker'] else 'no'}, plan {'exact' if r['planner_exact'] else 'wrong'}")
    n = max(n_prompts, 1)

    def share(wording: str, key: str) -> float:
        return round(sum(bool(r and r[key]) for r in runs[wording]) / n, 4)

    done = [r for r in runs["test"] if r is not None]
    hits, planned, extra = (sum(r[k] for r in done) for k in ("hits", "planned", "extra"))
    seconds = [r["seconds"] for wording in runs for r in runs[wording] if r is not None]
    return {"generation": "ok", "text_video_consistency": share("test", "both"),
            "consistency_captioner": share("test", "captioner"), "consistency_checker": share("test", "checker"),
            "generator_fidelity_to_plan": share("test", "fidelity"), "planner_exact": share("test", "planner_exact"),
            "scene_count_accuracy": share("test", "same_count"), "cut_accuracy": round(hits / max(planned, 1), 4),
            "planned_cuts": planned, "false_cuts_per_video": round(extra / n, 3),
            "text_video_consistency_train_wording": share("train", "both"),
            "consistency_captioner_train_wording": share("train", "captioner"),
            "consistency_checker_train_wording": share("train", "checker"),
            "planner_exact_train_wording": share("train", "planner_exact"),
            "scene_count_accuracy_train_wording": share("train", "same_count"),
            "generate_seconds_mean": round(float(np.mean(seconds)), 3) if seconds else None,
            "resolution": resolution, "fps": fps, "lexicon": lexicon}


def evaluate(n_prompts: int = 20, n_clips: int = 200, seed: int = 0, *, resolution: str = "360p", fps: int = 12,
             lexicon: bool = True, log=None) -> dict:
    """The video studio on held-out synthetic data (test splits: object combinations and phrasings
    never seen in training). Keys: text_video_consistency (generated videos whose scene count, and
    every scene's objects, colours, motion, background and camera, both the captioner and the
    pixel checker confirm), caption_attribute_accuracy, caption_exact_match and bleu4 (captioner on
    rendered held-out clips), cut_accuracy (planned cuts of generated videos found within 2 frames),
    cut_accuracy_rendered (the same on rendered held-out scripts), plus their parts:
    consistency_captioner / consistency_checker (each judge alone), planner_exact (the planner's script
    names the true one), generator_fidelity_to_plan (the checker confirms the planner's own script),
    scene_count_accuracy (shots found = scenes).
    text_video_consistency_train_wording: the same check on the same held-out (shape, colour, motion)
    combinations phrased with the TRAINING wording (world.script_to_prompt(script, rng, "train")); with
    planner_exact_train_wording, consistency_captioner_train_wording, consistency_checker_train_wording
    and scene_count_accuracy_train_wording. The gap between text_video_consistency and
    text_video_consistency_train_wording is what unseen wording costs; what the train-wording figure
    misses is lost in the rest of the chain (generator, shot detection, captioner, checker). Each of the
    n_prompts scripts is generated once per wording (2 * n_prompts videos). lexicon: the studio rewrites
    words its planner never saw first (prompt_lexicon; False: the planner alone reads them)."""
    import time

    from .captioner import evaluate_captioner, shared_captioner

    for name, value in (("n_prompts", n_prompts), ("n_clips", n_clips)):
        if value < 0:
            raise ValueError(f"{name} must be >= 0, got {value}")
    log = log or (lambda msg: None)
    start = time.perf_counter()
    rng = np.random.default_rng(seed)
    out: dict = {"seed": seed, "n_prompts": n_prompts, "n_clips": n_clips}
    captioner = shared_captioner()
    if captioner is None:
        out["captioner"] = "skipped: no captioner checkpoint (assets/video_generation/captioner)"
    elif n_clips:
        out.update(evaluate_captioner(captioner, n_clips, seed=seed + 1))
    n_cut = max(1, n_clips // 10) if n_clips else 0
    out.update(_rendered_cuts(n_cut, rng, 24.0, (180, 320)))
    out["checker_pass_rate_on_ground_truth"] = _checker_reliability(max(1, n_clips // 10), rng, 12.0, (180, 320))
    if n_prompts:
        out.update(_generated(n_prompts, rng, captioner, resolution, fps, log, seed, lexicon))
    out["seconds"] = round(time.perf_counter() - start, 1)
    return out
