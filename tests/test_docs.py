"""The documentation stays true: the README's example runs as written, and docs/ops.md (the op contract) is the
one every pointer in the repository resolves to."""
import os
import re

ROOT = os.path.join(os.path.dirname(__file__), "..")
README = os.path.join(ROOT, "README.md")
OPS_DOC = os.path.join(ROOT, "docs", "ops.md")
SCANNED = ["README.md", "Makefile", "setup.py", "CMakeLists.txt", "pyproject.toml", "restore_ext", "tests",
           "benchmarks", "csrc", "scripts", "docs", ".ci"]
TEXT_SUFFIXES = (".py", ".md", ".h", ".cuh", ".cu", ".cpp", ".sh", ".toml", ".txt", "Makefile", "run")


def repo_text_files():
    for entry in SCANNED:
        path = os.path.join(ROOT, entry)
        if os.path.isfile(path):
            yield path
            continue
        for folder, dirs, files in os.walk(path):
            dirs[:] = [d for d in dirs if not d.startswith(".") and d not in ("__pycache__", "build")]
            for name in files:
                if name.endswith(TEXT_SUFFIXES):
                    yield os.path.join(folder, name)


def test_readme_example_runs():
    text = open(README).read()
    blocks = re.findall(r"```python\n(.*?)```", text, flags=re.S)
    assert blocks, "README has no python example"
    scope = {}
    exec(compile(blocks[0], "README.md", "exec"), scope)
    assert scope["out"].shape == scope["q"].shape
    assert (scope["red"].size.sum(1) == 576).all()


def test_every_contract_pointer_names_a_section_of_docs_ops():
    sections = set(re.findall(r"^##+ (\d+[a-z]?)\. ", open(OPS_DOC).read(), flags=re.M))
    assert {"1", "2", "3", "4", "5"} <= sections, sections
    dangling = []
    for path in repo_text_files():
        for ref in re.findall(r"docs/ops\.md,? §(\d+[a-z]?)", open(path, errors="replace").read()):
            if ref not in sections:
                dangling.append(f"{os.path.relpath(path, ROOT)}: §{ref}")
    assert not dangling, f"pointers to sections docs/ops.md does not have: {dangling}"


def test_no_file_points_outside_the_repository():
    """A user's clone has only the repository: the contract is docs/ops.md, never a file beside the clone."""
    offenders = [os.path.relpath(p, ROOT) for p in repo_text_files() if "../shared" in open(p, errors="replace").read()]
    offenders = [p for p in offenders if p != os.path.join("tests", "test_docs.py")]
    assert not offenders, offenders
    assert "docs/ops.md" in open(README).read(), "the README must link the op contract"
