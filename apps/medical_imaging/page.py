"""The nodule-diagnosis page: upload a zipped CT study (and its report), scroll the slices with the
findings circled, read the findings and their malignancy estimates, download the results.

Research software, not a medical device. The page and the API share one set of models per process.
"""
from __future__ import annotations

import json
import tempfile
import zipfile
from pathlib import Path

import gradio as gr
import numpy as np

INTRO = """\
# CT lung-nodule diagnosis
Upload a zip of one CT study's DICOM files (or of one NIfTI / MetaImage file) and, if you have it, the
radiologist's report. Candidates over the lungs are rated by a 3D Swin MoE network that reads the report
alongside the image; each finding gets a malignancy estimate. **Research software, not a medical device:
not for diagnosis or treatment decisions.**
"""
COLUMNS = ["#", "P(nodule)", "P(image only)", "diameter mm", "lobe", "kind", "malignancy", "x mm", "y mm", "z mm",
           "slice k", "report sentence"]


def _table(findings: list) -> list[list]:
    return [[f.nodule_id, f.probability, f.probability_image_only, f.diameter_mm, f.lobe, f.kind,
             "n/a" if f.malignancy is None else f.malignancy, f.x_mm, f.y_mm, f.z_mm, f.key_slices[0],
             f.report_sentence or ""] for f in findings]


def _explain(findings: list) -> str:
    if not findings:
        return "No finding at or above the operating point."
    lines = [f"- **#{f.nodule_id}** ({f.diameter_mm:.0f} mm, {f.lobe}, P(nodule) {f.probability:.2f}"
             f"{'' if f.report_sentence is None else ', the report agrees: “' + f.report_sentence + '”'}): "
             f"{f.malignancy_note or 'no malignancy estimate'}" for f in findings]
    return "\n".join(lines)


def _results_zip(doc: dict, volume, findings: list, folder: Path) -> Path:
    from .overlays import write_overlays

    pngs = write_overlays(volume.hu_ZYX, volume.spacing_zyx, findings, folder / "overlays")
    path = folder / "results.zip"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr("findings.json", json.dumps(doc, indent=1))
        for p in pngs:
            z.write(p, f"overlays/{p.name}")
    return path


def analyse(upload: str | None, report: str, threshold: float, progress=gr.Progress()):
    """Run the pipeline on an upload: (state, slider, image, table, explanation, download)."""
    if not upload:
        raise gr.Error("Upload a zip of the study's DICOM files first.")
    from .pipeline import diagnose_upload, load_upload_file, shared_models

    try:
        progress(0.1, desc="reading the study")
        study = load_upload_file(upload)
        progress(0.4, desc="finding and rating nodules")
        result, doc = diagnose_upload(study, report, Path(upload).name, shared_models(), threshold)
    except ValueError as exc:
        raise gr.Error(str(exc)) from None
    volume = study.volume
    folder = Path(tempfile.mkdtemp(prefix="medical-page-"))
    download = _results_zip(doc, volume, result.findings, folder)
    k = result.findings[0].key_slices[0] if result.findings else volume.hu_ZYX.shape[0] // 2
    state = {"hu": volume.hu_ZYX.astype(np.int16), "spacing": volume.spacing_zyx, "findings": result.findings}
    slider = gr.Slider(0, volume.hu_ZYX.shape[0] - 1, value=k, step=1, label="slice k", interactive=True)
    status = (f"{len(result.findings)} findings from {result.candidates} candidates in {result.seconds['total']:.1f} s"
              + ("" if result.report_given else " (no report: image only)")
              + "".join(f"\n- warning: {w}" for w in result.warnings))
    return (state, slider, show_slice(state, k), _table(result.findings), _explain(result.findings), str(download),
            status)


def show_slice(state: dict | None, k: float):
    from .overlays import render_slice

    if not state:
        return None
    return render_slice(state["hu"], state["spacing"], int(k), state["findings"])


def build() -> gr.Blocks:
    """The page as a Gradio Blocks app (the server mounts it at /medical)."""
    from .pipeline import operating_point

    with gr.Blocks(title="CT lung-nodule diagnosis") as page:
        gr.Markdown(INTRO)
        state = gr.State(None)
        with gr.Row():
            with gr.Column(scale=2):
                upload = gr.File(label="study (.zip of DICOM files and its report, or one NIfTI / NRRD / .mha)",
                                 file_types=[".zip", ".nii", ".gz", ".nrrd", ".mha"], type="filepath")
                report = gr.Textbox(label="report (optional; else the report file in the zip)", lines=6,
                                    placeholder="e.g. There is a 7 mm nodule in the right upper lobe.")
                # the detector's own operating point (what the batch and the API use), read on each page load
                threshold = gr.Slider(0.0, 1.0, value=operating_point, step=0.0001,
                                      label="operating point: P(nodule) at least (default: the detector's)")
                with gr.Row():
                    run = gr.Button("Find nodules", variant="primary")
                    stop = gr.Button("Cancel")
                status = gr.Markdown()
                download = gr.File(label="results (findings.json + overlays)")
            with gr.Column(scale=3):
                image = gr.Image(label="axial slice, lung window (findings circled)", type="numpy")
                slider = gr.Slider(0, 1, value=0, step=1, label="slice k")
        table = gr.Dataframe(headers=COLUMNS, label="findings", interactive=False)
        explanation = gr.Markdown()
        diagnosing = run.click(analyse, [upload, report, threshold],
                               [state, slider, image, table, explanation, download, status], api_name="diagnose")
        stop.click(None, cancels=[diagnosing], api_name=False)
        slider.change(show_slice, [state, slider], image, api_name=False)
    return page
