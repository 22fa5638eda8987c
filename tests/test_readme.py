"""The README's SDK quick start runs as written against a real server."""
import re
import subprocess
import sys
from pathlib import Path

README = Path(__file__).resolve().parent.parent / "README.md"


def test_quick_start_runs_against_a_real_server(server):
    text = README.read_text()
    block = re.search(r"## Quick start with the official Python SDK\n.*?```python\n(.*?)```", text, re.S).group(1)
    assert '"127.0.0.1:8090"' in block
    script = block.replace('"127.0.0.1:8090"', f'"{server.tcp_address}"')
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert "[b'hello', b'world']" in out.stdout
