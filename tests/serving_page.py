"""Drive the serving deployment's own page in a real browser: Playwright (from pip) with Debian's
chromium (``make browser`` installs it; Playwright's own browser download is not used). Used by
tests/test_serving_e2e.py and benchmarks/serving_latency.py (``--screenshot``)."""

from __future__ import annotations

import os
import re
from pathlib import Path

CHROMIUM = os.environ.get("BLOODCELL_CHROMIUM", "/usr/bin/chromium")
ARGS = [
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
]


def browser_missing() -> str | None:
    """Why the page cannot be driven here, or None."""
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "playwright is not installed (pip install -e '.[dev]')"
    if not Path(CHROMIUM).is_file():
        return (
            f"no chromium at {CHROMIUM} (`make browser` installs Debian's with apt-get; "
            "set BLOODCELL_CHROMIUM for another)"
        )
    return None


def classify_on_page(
    url: str,
    key: str,
    files: list[Path],
    screenshot: Path | None = None,
    explain: int | None = 0,
    timeout_ms: int = 60_000,
) -> dict:
    """Open ``url``/, type the key, choose ``files``, wait for the answers and read them off the
    page: the status line, each card's class, confidence and bars; click "Where did it look?"
    on card ``explain``; optionally save a screenshot. Console errors are returned too."""
    from playwright.sync_api import expect, sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        try:
            page = browser.new_page(viewport={"width": 1000, "height": 900})
            errors: list[str] = []
            page.on("console", lambda m: m.type == "error" and errors.append(m.text))
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.goto(url.rstrip("/") + "/")
            page.fill("#key", key)
            page.set_input_files("#files", [str(f) for f in files])
            # wait_for_function would need 'unsafe-eval', which the page's policy (rightly) forbids
            expect(page.locator("#status")).to_have_text(
                re.compile(r"^(HTTP|No answer)"), timeout=timeout_ms
            )
            cards = page.locator(".card")
            result = {
                "status": page.inner_text("#status"),
                "model": page.inner_text("#model"),
                "classes": [cards.nth(i).get_attribute("data-cls") for i in range(cards.count())],
                "confidences": page.locator(".card .conf").all_inner_texts(),
                "bars": [cards.nth(i).locator(".bar").count() for i in range(cards.count())],
                "statuses": [
                    cards.nth(i).get_attribute("data-status") for i in range(cards.count())
                ],
                "badges": page.locator(".card .badge").all_inner_texts(),
                "reasons": page.locator(".card .reason").all_inner_texts(),
                "rules": page.locator(".rule").all_inner_texts(),
                "errors": errors,
            }
            if (
                explain is not None
                and cards.count() > explain
                and result["status"].startswith("HTTP 200")
            ):
                cards.nth(explain).locator("button.explain").click()
                expect(cards.nth(explain)).to_have_attribute(
                    "data-explained", "1", timeout=timeout_ms
                )
                result["explanation"] = cards.nth(explain).locator(".why").inner_text()
            if screenshot:
                page.screenshot(path=str(screenshot), full_page=True)
            return result
        finally:
            browser.close()
