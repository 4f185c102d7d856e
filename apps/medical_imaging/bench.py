"""`moe-suite bench medical`: DICOM series loading (ours against MONAI's LoadImage with its pydicom
reader, same folder, interleaved repeats), whole-pipeline seconds per clinical-size study, and batch
throughput in studies per hour.

Wall-clock and CPU seconds are both reported: on a shared machine the wall clock mostly measures the
other tenants, the process CPU time what the work itself costs.
"""
from __future__ import annotations

import json
import os
import resource
import statistics
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path


@dataclass
class MedicalBenchConfig:
    shape: tuple[int, int, int] = (150, 512, 512)   # slices, rows, columns of the load / pipeline study
    repeats: int = 3                   # interleaved load repeats of each reader (median reported)
    batch_studies: int = 4             # small default-size synthetic studies in the batch run
    batch_workers: int = 2
    batch_shape: tuple[int, int, int] | None = None  # batch studies' slices, rows, columns (None: SynthConfig's)
    seed: int = 0
    detector: Path | None = None       # default: the shipped detector


def _rss_mb() -> float:
    """This process's resident memory now (MB), from /proc."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return round(int(line.split()[1]) / 1024, 1)
    return float("nan")


def _percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    return round(values[min(len(values) - 1, round(q / 100 * (len(values) - 1)))], 3)


def _timed(fn):
    wall, cpu = time.perf_counter(), time.process_time()
    out = fn()
    return out, time.perf_counter() - wall, time.process_time() - cpu


def run(cfg: MedicalBenchConfig) -> dict:
    import torch

    from data_connectors.dicom import load_series, scan_folder

    from .batch import BatchConfig, run_batch
    from .pipeline import Models, diagnose
    from .synth import SynthConfig, make_study, write_dataset, write_study_dicom

    torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))
    result: dict = {"machine": f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f} at start",
                    "shape_zyx": list(cfg.shape)}
    with tempfile.TemporaryDirectory(prefix="bench-medical-") as tmp:
        tmp = Path(tmp)
        clinical = SynthConfig.clinical(shape_zyx=tuple(cfg.shape))
        study = make_study(0, cfg.seed, clinical)
        folder = write_study_dicom(study, tmp / "study")
        series = scan_folder(folder).series[0]

        from monai.transforms import LoadImage
        monai_loader = LoadImage(reader="PydicomReader", image_only=True)
        ours, theirs = [], []
        for _ in range(cfg.repeats):                       # interleaved: both see the same machine state
            ours.append(_timed(lambda: load_series(series))[1])
            theirs.append(_timed(lambda: monai_loader(str(folder)))[1])
        result.update(load_ours_median_s=round(statistics.median(ours), 3),
                      load_monai_pydicom_median_s=round(statistics.median(theirs), 3),
                      load_speedup_vs_monai=round(statistics.median(theirs) / statistics.median(ours), 2),
                      load_repeats=cfg.repeats, slices=len(series.files))

        models = Models.load(cfg.detector)
        volume = load_series(series)
        diagnose(volume, study.report, models)            # warm-up: lazy imports, the text stream
        (res, wall, cpu) = _timed(lambda: diagnose(load_series(series), study.report, models))
        result.update(pipeline_seconds_per_study=round(wall, 2), pipeline_cpu_seconds_per_study=round(cpu, 2),
                      pipeline_stage_seconds=res.seconds, pipeline_candidates=res.candidates,
                      pipeline_findings=len(res.findings))

        data = tmp / "batch"
        batch_cfg = SynthConfig(shape_zyx=tuple(cfg.batch_shape)) if cfg.batch_shape else SynthConfig()
        write_dataset(data, cfg.batch_studies, seed=cfg.seed + 1, cfg=batch_cfg)
        rss_before = _rss_mb()
        summary, wall, _ = _timed(lambda: run_batch(BatchConfig(
            input=data / "studies", out=tmp / "batch-out", reports=data / "reports", workers=cfg.batch_workers,
            detector=cfg.detector, progress=False)))
        study_s = sorted(json.loads(p.read_text())["seconds"]
                         for p in (tmp / "batch-out" / "studies").glob("*/done.json"))
        result.update(batch_studies=cfg.batch_studies, batch_workers=cfg.batch_workers,
                      batch_seconds=round(wall, 1), batch_failed=summary["failed"],
                      batch_errors=summary.get("errors", 0),
                      studies_per_hour=round(3600 * summary["processed"] / wall, 1),
                      batch_study_shape_zyx=list(batch_cfg.shape_zyx),
                      study_p50_s=_percentile(study_s, 50), study_p95_s=_percentile(study_s, 95),
                      study_p99_s=_percentile(study_s, 99),
                      batch_rss_before_mb=rss_before, batch_rss_after_mb=_rss_mb(),
                      batch_worker_peak_rss_mb=round(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024, 1))
    result["machine"] += f", {os.getloadavg()[0]:.1f} at end"
    return result
