"""The README's Koopman example runs as written."""

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_readme_koopman_example_runs(tmp_path, monkeypatch):
    text = (ROOT / "README.md").read_text()
    section = re.search(r"<!-- section:koopman -->(.*?)<!-- /section:koopman -->", text, re.S).group(1)
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    exec(compile(code, "README.md (koopman)", "exec"), namespace)
    assert namespace["result"].test is not None
    assert namespace["dmd"].eigenvalues_.shape == (6,)
