"""The web page in headless Chromium: key → upload and train → live progress → generate → storyboard."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.gateway.web.conftest import LiveService
from tests.services.models import draw_subject

pytestmark = [pytest.mark.services, pytest.mark.slow]
SCREENSHOT = Path(__file__).resolve().parents[2] / "artifacts" / "web-flow.png"


def test_web_page_trains_and_generates_in_browser(live_service: LiveService, browser_page, tmp_path: Path) -> None:
    page = browser_page
    photos = []
    for i in range(3):
        photos.append(tmp_path / f"photo-{i}.png")
        draw_subject(i).save(photos[-1])

    # 1. A wrong key is refused in words; the right one, entered once, survives a reload
    page.goto(live_service.url)
    page.fill("#api-key", "lm_wrong_key")
    page.click("#save-key")
    page.wait_for_selector("#message.error:has-text('401')")
    page.fill("#api-key", live_service.api.keys["alice"])
    page.click("#save-key")
    page.wait_for_selector("#whoami:has-text('signed in as alice')")
    page.reload()
    page.wait_for_selector("#whoami:has-text('signed in as alice')")

    # 2. Upload photos and train; the progress row reaches completed
    page.set_input_files("#train-photos", [str(p) for p in photos])
    assert page.locator("#train-previews img").count() == 3
    page.fill("#train-trigger", "sks")
    page.select_option("#train-subject", "style")
    page.click("#train-card summary")
    page.fill("#train-steps", "6")
    page.fill("#train-resolution", "64")
    page.fill("#train-eval-every", "3")
    page.click("#train-submit")
    ended = page.wait_for_selector(".job:is([data-status='completed'], [data-status='failed'])", timeout=120_000)
    assert ended.get_attribute("data-status") == "completed", ended.inner_text()
    # the run evaluated itself at steps 3 and 6: a chart of preservation and a sample grid per evaluation
    page.wait_for_function("[...document.querySelectorAll('#train-quality .strip img')]"
                           ".filter(i => i.naturalWidth > 0).length === 3", timeout=60_000)
    assert page.locator("#train-quality polyline[data-metric='preservation_pixel']").count() == 1
    page.wait_for_selector(".lora .use:checked")

    # 3. Generate with the LoRA: the picture lands in the gallery
    for field, value in (("#gen-width", "64"), ("#gen-height", "64"), ("#gen-steps", "2"), ("#gen-seed", "7")):
        page.fill(field, value)
    page.fill("#gen-prompt", "a photo of sks")
    page.locator(".lora .weight").fill("0.9")
    page.click("#gen-submit")
    page.wait_for_function("[...document.querySelectorAll('#gallery img')].some(i => i.naturalWidth > 0)",
                           timeout=120_000)

    # 4. Storyboard: two scenes, same LoRA and seed, a strip of two frames
    page.click("#storyboard-tab")
    page.fill("#story-scenes", "sks rides across the steppe\nsks laughs at the bazaar")
    page.click("#gen-submit")
    page.wait_for_function("[...document.querySelectorAll('#storyboard .frame img')]"
                           ".filter(i => i.naturalWidth > 0).length === 2", timeout=120_000)

    jobs = live_service.api.store.list_jobs("alice").items
    assert sorted(j.kind for j in jobs) == ["generate", "generate", "generate", "train"]
    assert all(j.status.value == "completed" for j in jobs)
    assert {j.payload["seed"] for j in jobs if j.kind == "generate"} == {7}
    assert page.locator("#message.error:visible").count() == 0
    SCREENSHOT.parent.mkdir(exist_ok=True)
    page.screenshot(path=str(SCREENSHOT), full_page=True)
