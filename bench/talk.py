"""Time to talk: Start pressed to the call's data channel open, in real headless Chromium.

The page opens the microphone, builds its peer connection and posts its offer;
the server mints the secret and creates the call with it; the page applies the
answer and the data channel opens. Against the local simulator on loopback (no
added delay), one daphne process on SQLite with its sideband worker; STARTS
conversations one after another, each stopped before the next.
"""

from pathlib import Path

from .harness import CHROMIUM, PASSWORD, chromium_args, percentile, service, simulator, wait_js

STARTS = 10
WARM_UP = 2


def measure(base):
    from playwright.sync_api import sync_playwright

    assert Path(CHROMIUM).exists(), f"{CHROMIUM} is missing: run `make test` (it installs Debian's chromium)"
    times = []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=chromium_args())
        page = browser.new_context(base_url=base).new_page()
        page.set_default_timeout(15_000)
        page.goto("/accounts/login/")
        page.get_by_label("Username").fill("bench0")
        page.get_by_label("Password").fill(PASSWORD)
        page.get_by_role("button", name="Sign in").click()
        page.wait_for_url("**/")
        for attempt in range(WARM_UP + STARTS):
            page.get_by_role("button", name="Start").click()
            wait_js(page, "window.voiceSession?.timings?.open")
            timings = page.evaluate("window.voiceSession.timings")
            if attempt >= WARM_UP:
                times.append(timings["open"] - timings["pressed"])
            page.get_by_role("button", name="Stop").click()
            page.get_by_role("status").filter(has_text="Session ended").wait_for()
        browser.close()
    return times


def main():
    with simulator() as sim, service(sim, 1) as top:
        times = measure(top.bases[0])
    print(f"time to talk: Start pressed to data channel open, real Chromium, loopback, {STARTS} starts")
    print("| starts | p50 | p95 | max |")
    print("| ---: | ---: | ---: | ---: |")
    print(f"| {len(times)} | {percentile(times, 50):.0f} ms | {percentile(times, 95):.0f} ms | {max(times):.0f} ms |")


if __name__ == "__main__":
    main()
