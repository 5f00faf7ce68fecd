"""Drives Swagger UI at /docs in headless Chromium as a person would: opens POST /score,
presses "Try it out" and "Execute" with the example body the document offers, reads the
answer shown on the page and saves a screenshot of it. Given a key, first presses
"Authorize", types the key into the bearer field and confirms, as a person would with
auth on (and `auth.public_docs`, so the page itself loads without a credential).

usage: swagger_try_it_out.py BASE_URL SCREENSHOT_PNG [KEY]
Prints one JSON object: {"status": <HTTP status shown>, "body": <response body shown>}.
Talks to Chromium over the DevTools protocol (websocket-client); no browser download.
"""

import base64
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request

import websocket

CHROMIUM_FLAGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--window-size=1280,1400", "--remote-debugging-port=0", "--remote-allow-origins=*",
]

# Runs in the page: clicks through the operation and waits for Swagger UI to show the answer.
TRY_IT_OUT = r"""
(async () => {
  const sleep = ms => new Promise(r => setTimeout(r, ms));
  const until = async (find, what) => {
    for (let i = 0; i < 300; i++) { const found = find(); if (found) return found; await sleep(100); }
    throw new Error('timed out waiting for ' + what);
  };
  const key = __KEY__;
  if (key !== null) {
    (await until(() => document.querySelector('.auth-wrapper button.authorize'), 'the Authorize button')).click();
    const field = await until(() => document.querySelector('.modal-ux input'), 'the bearer field');
    // React reads the value through its own setter and an input event, as typing does.
    Object.getOwnPropertyDescriptor(HTMLInputElement.prototype, 'value').set.call(field, key);
    field.dispatchEvent(new Event('input', {bubbles: true}));
    (await until(() => document.querySelector('.modal-ux .auth-btn-wrapper button.authorize'),
                 'Authorize in the dialog')).click();
    (await until(() => document.querySelector('.modal-ux button.btn-done'), 'Close in the dialog')).click();
  }
  const op = await until(() => document.querySelector('#operations-scoring-score_default'), 'POST /score');
  if (!op.classList.contains('is-open')) op.querySelector('button.opblock-summary-control').click();
  const tryOut = await until(() => op.querySelector('button.try-out__btn'), 'the Try it out button');
  if (tryOut.textContent.trim() === 'Try it out') tryOut.click();
  const execute = await until(() => op.querySelector('button.execute'), 'the Execute button');
  execute.click();
  const row = await until(() => {
    const r = op.querySelector('.live-responses-table .response');
    return r && r.querySelector('.response-col_description pre') ? r : null;
  }, 'the response');
  row.scrollIntoView({block: 'center'});
  return JSON.stringify({
    status: parseInt(row.querySelector('.response-col_status').textContent.trim(), 10),
    body: row.querySelector('.response-col_description pre').textContent,
  });
})()
"""


class DevTools:
    def __init__(self, ws_url):
        self.ws = websocket.create_connection(ws_url, timeout=60)
        self.next_id = 0

    def call(self, method, **params):
        self.next_id += 1
        self.ws.send(json.dumps({"id": self.next_id, "method": method, "params": params}))
        while True:
            message = json.loads(self.ws.recv())
            if message.get("id") == self.next_id:
                if "error" in message:
                    raise RuntimeError(f"{method}: {message['error']}")
                return message["result"]


def main():
    base_url, screenshot = sys.argv[1:3]
    key = sys.argv[3] if len(sys.argv) > 3 else None
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        sys.exit("chromium is not installed (apt-get install chromium)")
    profile = tempfile.mkdtemp(prefix="rfleet-chromium-")
    browser = subprocess.Popen(
        [chromium, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", "about:blank"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )
    try:
        port = None
        deadline = time.time() + 60
        while port is None and time.time() < deadline:
            line = browser.stderr.readline()
            if not line and browser.poll() is not None:
                sys.exit(f"chromium exited with {browser.returncode}")
            match = re.search(r"DevTools listening on ws://127\.0\.0\.1:(\d+)/", line)
            if match:
                port = int(match.group(1))
        if port is None:
            sys.exit("chromium did not open its DevTools port")
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list") as response:
            pages = [t for t in json.load(response) if t["type"] == "page"]
        tools = DevTools(pages[0]["webSocketDebuggerUrl"])
        tools.call("Page.enable")
        tools.call("Page.navigate", url=f"{base_url}/docs/")
        script = TRY_IT_OUT.replace("__KEY__", json.dumps(key))
        result = tools.call("Runtime.evaluate", expression=script, awaitPromise=True, returnByValue=True)
        if "exceptionDetails" in result:
            sys.exit(f"Try it out failed in the page: {result['exceptionDetails']}")
        shot = tools.call("Page.captureScreenshot", format="png")
        with open(screenshot, "wb") as f:
            f.write(base64.b64decode(shot["data"]))
        print(result["result"]["value"])
    finally:
        browser.kill()
        browser.wait()
        shutil.rmtree(profile, ignore_errors=True)


if __name__ == "__main__":
    main()
