"""Screenshot of the `ecar serve` page after one generation (docs/images/serve.png).

Starts `ecar serve` on 127.0.0.1 with the given checkpoints, opens the page in headless
Chromium (Debian's, driven by Playwright), picks a class, generates and saves the page.

    python scripts/serve_screenshot.py --ckpt ecar-demo/run --ckpt runs/dit --class 3 \\
        --out docs/images/serve.png
"""

from __future__ import annotations

import argparse
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request

from playwright.sync_api import sync_playwright

ARGS = ["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-proxy-server",
        "--disable-background-networking", "--disable-component-update", "--disable-sync",
        "--no-first-run", "--disable-quic"]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--ckpt", action="append", required=True)
    ap.add_argument("--class", dest="klass", default="3")
    ap.add_argument("--n", default="16")
    ap.add_argument("--seed", default="0")
    ap.add_argument("--width", type=int, default=1280)
    ap.add_argument("--out", default="docs/images/serve.png")
    args = ap.parse_args()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cmd = [sys.executable, "-m", "ecar", "serve", "--port", str(port)]
    for c in args.ckpt:
        cmd += ["--ckpt", c]
    server = subprocess.Popen(cmd, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        for _ in range(600):
            try:
                opener.open(url + "/api/models", timeout=2).close()
                break
            except OSError:
                time.sleep(0.2)
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=shutil.which("chromium"), args=ARGS)
            page = browser.new_page(viewport={"width": args.width, "height": 800})
            page.goto(url)
            page.wait_for_selector("body[data-ready='1']")
            page.select_option("#class", args.klass)
            page.fill("#n", args.n)
            page.fill("#seed", args.seed)
            page.click("#generate")
            page.wait_for_function("[...document.querySelectorAll('section.model')]"
                                   ".every(s => s.dataset.state === 'done')", timeout=120_000)
            page.screenshot(path=args.out, full_page=True)
            browser.close()
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(30)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
