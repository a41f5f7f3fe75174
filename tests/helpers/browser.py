"""Pages in headless Chromium at a 1400-px window: how many pictures, which did not load, the page's scroll width, and
per comparison table how many distinct heights its sample row's pictures sit at (1: one row)."""
from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest

CHROMIUM = next((shutil.which(n) for n in ("chromium", "chromium-browser", "google-chrome") if shutil.which(n)), None)
WIDTH = 1400
#: skip a browser test where there is no Chromium
needs_chromium = pytest.mark.skipif(CHROMIUM is None,
                                    reason="headless Chromium not installed (apt-get install chromium; .ci/run does)")
#: appended to a copy of the page beside it: after loading (lazy pictures made eager), the body carries the findings
PROBE = """<script>
document.querySelectorAll('img[loading=lazy]').forEach(function (i) { i.loading = 'eager'; });
window.addEventListener('load', function () {
  var images = Array.from(document.images);
  var broken = images.filter(function (i) { return !i.complete || i.naturalWidth === 0; });
  var rows = Array.from(document.querySelectorAll('table.cmp')).map(function (t) {
    var tops = Array.from(t.rows[1].querySelectorAll('img')).map(function (i) { return i.getBoundingClientRect().top; });
    return [tops.length, new Set(tops).size];
  });
  document.body.setAttribute('data-found', JSON.stringify({images: images.length,
    broken: broken.map(function (i) { return i.getAttribute('src'); }),
    scroll_width: document.documentElement.scrollWidth, sample_rows: rows}));
});</script>"""


def render(page: Path, screenshot: Path, height: int = 2400) -> dict:
    """{'images', 'broken' (their sources), 'scroll_width', 'sample_rows' ([pictures, distinct heights] per comparison
    table)} of ``page`` in headless Chromium at :data:`WIDTH` px; saves a screenshot of the first ``height`` px."""
    probe = page.with_name(page.stem + ".probe.html")
    probe.write_text(page.read_text().replace("</body>", PROBE + "</body>"))
    flags = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--virtual-time-budget=5000",
             f"--window-size={WIDTH},{height}", "--hide-scrollbars"]
    try:
        dom = subprocess.run([*flags, "--dump-dom", probe.as_uri()], capture_output=True, text=True, timeout=120,
                             check=True).stdout
        subprocess.run([*flags, f"--screenshot={screenshot}", page.as_uri()], capture_output=True, timeout=120,
                       check=True)
    finally:
        probe.unlink()
    found = re.search(r"<body[^>]*data-found=\"([^\"]*)\"", dom)
    assert found, f"the probe did not run: {dom[:300]}"
    return json.loads(found.group(1).replace("&quot;", '"').replace("&amp;", "&"))
