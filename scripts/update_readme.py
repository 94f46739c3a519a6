"""Copy generated report tables into README.md between `<!-- report:NAME -->` and `<!-- /report -->` markers.

The tables come from `dynafuse experiment` / `dynafuse summarize ... --out reports/NAME`; nothing is typed.
Usage: .venv/bin/python scripts/update_readme.py
"""

import re
from pathlib import Path

root = Path(__file__).resolve().parents[1]
readme = root / "README.md"
text = readme.read_text()


def fill(match: re.Match) -> str:
    name = match.group(1)
    report = root / "reports" / f"{name}.md"
    body = report.read_text().strip() if report.exists() else f"(run the command above to produce reports/{name}.md)"
    return f"<!-- report:{name} -->\n{body}\n<!-- /report -->"


readme.write_text(re.sub(r"<!-- report:([\w-]+) -->.*?<!-- /report -->", fill, text, flags=re.S))
print("README.md updated from reports/")
