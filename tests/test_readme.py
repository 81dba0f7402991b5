"""The README's Python example runs as written (documentation that cannot rot silently)."""
import os
import re

README = os.path.join(os.path.dirname(__file__), "..", "README.md")


def test_readme_example_runs():
    text = open(README).read()
    blocks = re.findall(r"```python\n(.*?)```", text, flags=re.S)
    assert blocks, "README has no python example"
    scope = {}
    exec(compile(blocks[0], "README.md", "exec"), scope)
    assert scope["out"].shape == scope["q"].shape
    assert (scope["red"].size.sum(1) == 576).all()
