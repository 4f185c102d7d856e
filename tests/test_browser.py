"""The pages in a real headless Chromium: the hub links every app, the Lab trains and draws its
expert-load chart, the chat answers a turn and shows its intent. Screenshots: tests/artifacts/browser/."""
from browser import chromium, page, shot, suite_url  # noqa: F401  (fixtures)

from apps.server import APPS


def test_hub_links_every_app(page, suite_url):
    page.goto(suite_url + "/")
    for a in APPS:
        link = page.locator(f"#app-{a.name} h2 a")
        assert link.inner_text() == a.title
    shot(page, "hub")
    page.locator("#app-lab h2 a").click()
    page.get_by_role("button", name="Train", exact=True).wait_for()
    assert page.url == suite_url + "/lab/"


def test_lab_trains_and_draws_the_expert_load(page, suite_url):
    page.goto(suite_url + "/lab/")
    steps = page.get_by_label("number input for steps")
    steps.fill("20")
    steps.press("Enter")
    page.get_by_role("button", name="Train", exact=True).click()
    page.get_by_text("step 20", exact=True).wait_for()
    chart = page.locator(".block", has=page.get_by_text("expert load", exact=True)).locator("img")
    chart.wait_for()
    assert chart.evaluate("img => img.complete && img.naturalWidth > 100")  # a drawn figure, not a placeholder
    shot(page, "lab")


def test_chat_answers_and_shows_the_intent(page, suite_url):
    page.goto(suite_url + "/chat/")
    box = page.get_by_placeholder("e.g. I lost my debit card")
    box.fill("block my card")
    page.get_by_role("button", name="Send", exact=True).click()
    page.get_by_text("Which card is it").first.wait_for()  # the assistant asks for the slot
    page.get_by_text("block_card").first.wait_for()  # the turn's details: intent and confidence
    assert "confidence 0.95" in page.locator("body").inner_text()
    shot(page, "chat")


def test_video_generates_a_clip_that_plays(page, suite_url):
    page.goto(suite_url + "/video/")
    page.get_by_label("script", exact=True).fill("a red ball rolls left on a beach, then cut to a blue square rising at night")
    seconds = page.get_by_label("number input for seconds")
    seconds.fill("2")
    seconds.press("Enter")
    page.get_by_role("button", name="Generate", exact=True).click()
    video = page.locator("video").first
    video.wait_for()
    page.wait_for_function("() => { const v = document.querySelector('video');"
                           " return v && v.readyState >= 2 && v.duration > 1; }", timeout=90_000)
    video.evaluate("v => { v.muted = true; return v.play(); }")
    page.wait_for_function("() => document.querySelector('video').currentTime > 0.2", timeout=30_000)
    assert page.get_by_text("which experts handled each scene").count() >= 1
    shot(page, "video")


def test_medical_diagnoses_a_synthetic_study_and_marks_the_nodule(page, suite_url, tmp_path):
    import re
    import zipfile

    from apps.medical_imaging.synth import make_study, write_study_dicom

    study = next(s for s in (make_study(i, seed=11) for i in range(20))
                 if s.nodules and max(n.diameter_mm for n in s.nodules) >= 10)
    folder = write_study_dicom(study, tmp_path / "study")
    archive = tmp_path / "study.zip"
    with zipfile.ZipFile(archive, "w") as z:
        for f in sorted(folder.rglob("*.dcm")):
            z.write(f, f"study/{f.name}")
    page.goto(suite_url + "/medical/")
    page.locator("input[type=file]").first.set_input_files(str(archive))
    page.get_by_label(re.compile(r"report \(optional")).fill(study.report or "")
    page.get_by_role("button", name="Find nodules", exact=True).click()
    status = page.get_by_text(re.compile(r"\d+ findings from \d+ candidates"))
    status.wait_for(timeout=120_000)
    assert int(status.inner_text().split()[0]) >= 1, status.inner_text()
    image = page.locator(".block", has=page.get_by_text("findings circled")).locator("img")
    image.wait_for()
    assert image.evaluate("img => img.complete && img.naturalWidth > 100")
    shot(page, "medical")
