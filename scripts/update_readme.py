"""Copy generated reports into README.md between `<!-- report:NAME -->` and `<!-- /report -->` markers.

The reports come from `dynafuse experiment` / `dynafuse report RUNS --out reports/NAME` / `dynafuse bench`;
nothing is typed. Headings are demoted under the README's own, and figure links made relative to the README.
Usage: .venv/bin/python scripts/update_readme.py
"""

import re
from pathlib import Path

root = Path(__file__).resolve().parents[1]
readme = root / "README.md"
text = readme.read_text()


def fill(match: re.Match) -> str:
    name = match.group(1)
    rel = f"{name}.md" if "/" in name else f"reports/{name}.md"  # NAME, or a repo-relative path such as benchmarks/…
    report = root / rel
    if not report.exists():
        return f"<!-- report:{name} -->\n(run the command above to produce {rel})\n<!-- /report -->"
    body = re.sub(r"^# .*\n+", "", report.read_text().strip() + "\n", count=1)  # the report's own title
    body = re.sub(r"^(#{2,4}) ", lambda m: "#" * min(len(m.group(1)) + 2, 6) + " ", body, flags=re.M)
    folder = str(Path(rel).parent)
    body = re.sub(r"\]\(((?!https?:|/)[^)]+\.(?:png|html|md|csv|json))\)", rf"]({folder}/\1)", body)
    return f"<!-- report:{name} -->\n{body.strip()}\n<!-- /report -->"


readme.write_text(re.sub(r"<!-- report:([\w/.-]+) -->.*?<!-- /report -->", fill, text, flags=re.S))
print("README.md updated from reports/")
