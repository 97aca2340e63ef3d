"""Driving the search page in a real browser: Debian's chromium + chromedriver (set-up installs both from apt)
through Selenium, headless, with nothing downloaded (no Selenium Manager, no browser download). Used by the
browser test and by `python -m serving.browser URL OUT.png` for the README's screenshot (docs/serving.md,
"The search page")."""

from __future__ import annotations

import os
import shutil
import sys
import tempfile

CHROMIUM = os.environ.get("DSRHN_CHROMIUM", "/usr/bin/chromium")
CHROMEDRIVER = os.environ.get("DSRHN_CHROMEDRIVER", "/usr/bin/chromedriver")


def available() -> str | None:
    """None when a browser can be driven here, else why not (for a test's skip reason)."""
    for path in (CHROMIUM, CHROMEDRIVER):
        if not (os.path.exists(path) and os.access(path, os.X_OK)):
            return f"{path} not found: `apt-get install chromium chromium-driver` (scripts/setup.sh does)"
    try:
        import selenium  # noqa: F401
    except ImportError:
        return "selenium is not installed (requirements.txt)"
    return None


class Browser:
    """A headless Chromium with its own empty profile; `driver` is a selenium WebDriver."""

    def __init__(self, width: int = 1200, height: int = 1000):
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service

        self.profile = tempfile.mkdtemp(prefix="dsrhn-chromium-")
        opts = webdriver.ChromeOptions()
        opts.binary_location = CHROMIUM
        for flag in (
            "--headless=new",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--disable-dev-shm-usage",
            f"--user-data-dir={self.profile}",
            f"--window-size={width},{height}",
        ):
            opts.add_argument(flag)
        self.driver = webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=opts)

    def close(self) -> None:
        try:
            self.driver.quit()
        finally:
            shutil.rmtree(self.profile, ignore_errors=True)

    def __enter__(self) -> Browser:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def search_file(self, url: str, image_path: str, k: int, timeout: float = 60.0) -> list[str]:
        """Open the page, set k, choose `image_path` in the file input; the ids of the hits shown, in order."""
        from selenium.webdriver.common.by import By
        from selenium.webdriver.support.ui import WebDriverWait

        d = self.driver
        d.get(url)
        wait = WebDriverWait(d, timeout)
        wait.until(lambda drv: "version" in drv.find_element(By.ID, "model").text)
        box = d.find_element(By.ID, "k")
        box.clear()
        box.send_keys(str(k))
        d.find_element(By.ID, "file").send_keys(os.path.abspath(image_path))
        wait.until(
            lambda drv: (
                len(drv.find_elements(By.CSS_SELECTOR, "#orders li.hit")) == k
                or drv.find_element(By.ID, "error").is_displayed()
            )
        )
        wait.until(lambda drv: all(_loaded(img) for img in drv.find_elements(By.CSS_SELECTOR, "#orders li.hit img")))
        return [li.get_attribute("data-id") for li in d.find_elements(By.CSS_SELECTOR, "#orders li.hit")]

    def error_text(self, timeout: float = 30.0) -> str:
        from selenium.webdriver.common.by import By
        from selenium.webdriver.support.ui import WebDriverWait

        WebDriverWait(self.driver, timeout).until(lambda drv: drv.find_element(By.ID, "error").is_displayed())
        return self.driver.find_element(By.ID, "error").text

    def screenshot(self, path: str) -> str:
        self.driver.save_screenshot(path)
        return path


def _loaded(img) -> bool:
    """An <img> element whose picture has arrived and decoded."""
    return img.get_attribute("complete") == "true" and int(img.get_attribute("naturalWidth") or 0) > 0


def main(argv: list[str]) -> int:
    """python -m serving.browser URL IMAGE OUT.png [K]: search the page at URL with IMAGE, save a screenshot."""
    url, image, out = argv[:3]
    k = int(argv[3]) if len(argv) > 3 else 12
    reason = available()
    if reason:
        print(reason, file=sys.stderr)
        return 1
    with Browser(1100, 1000) as b:
        ids = b.search_file(url, image, k)
        b.driver.execute_script("window.scrollTo(0, 0)")
        b.screenshot(out)
    print(f"{len(ids)} hits shown; screenshot: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
