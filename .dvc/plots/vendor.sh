#!/usr/bin/env bash
# Remake .dvc/plots/page.html: dvc-render's plot page with Vega, Vega-Lite and vega-embed
# inlined (the versions dvc-render 1.0.2 loads from jsdelivr), so `dvc plots show` and
# `dvc plots diff` render offline. Needs npm and network once; the page needs neither.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
(cd "$work" && npm init -y >/dev/null && npm install --no-audit --no-fund --legacy-peer-deps \
  vega@5.20.2 vega-lite@5.2.0 vega-embed@6.18.2 >/dev/null)
python3 - "$work/node_modules" "$here/page.html" <<'PY'
import sys
from pathlib import Path

modules, out = Path(sys.argv[1]), Path(sys.argv[2])
notices, scripts = [], []
for name, version in [("vega", "5.20.2"), ("vega-lite", "5.2.0"), ("vega-embed", "6.18.2")]:
    licence = (modules / name / "LICENSE").read_text().strip().replace("--", "- -")
    notices.append(f"{name} {version} (npm, build/{name}.min.js), BSD-3-Clause:\n\n{licence}")
    js = (modules / name / "build" / f"{name}.min.js").read_text()
    js = "\n".join(l for l in js.splitlines() if not l.startswith("//# sourceMappingURL="))
    # DVC fills the page by replacing its placeholders; a script must not contain one.
    assert "</script" not in js and not any(p in js for p in ("{plot_divs}", "{scripts}"))
    scripts.append(f'<script type="text/javascript">/* {name} {version} */\n{js}\n</script>')
page = f"""<!DOCTYPE html>
<!--
The page of `dvc plots show` / `dvc plots diff` (.dvc/config: plots.html_template): DVC's own
page with the three scripts its charts load from a CDN inlined, so it renders with no network.
Made by .dvc/plots/vendor.sh. The notices of the inlined scripts:

{chr(10).join(notices)}
-->
<html>
<head>
    {{refresh_tag}}
    <meta charset="utf-8">
    <title>DVC Plot</title>
{chr(10).join(scripts)}
    <style>
        table {{
            border-spacing: 15px;
        }}
    </style>
</head>
<body>
    {{plot_divs}}
</body>
</html>
"""
out.write_text(page)
print(f"{out}: {len(page.encode())} bytes")
PY
