"""The documentation agrees with the code: each constant is described once, by its comment in the
constants block, and --help and the README's table show that description."""
import os
import re
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)
import colorize_base as cb  # noqa: E402

START = "<!-- constants table: generated from the comments in colorize_base.py; tests/test_docs.py checks it -->"
END = "<!-- end of constants table -->"


def constants_markdown():
    """The README's table of constants, made from the block: name, flag, default, meaning."""
    comments = cb.constant_comments()
    rows = [f"| `{name}` | `{cb.flag(name)}` | `{default!r}` | {comments[name].replace('|', '/')} |"
            for name, default in cb.CONSTANTS.items()]
    return "\n".join(["| constant | flag | default | meaning |", "| --- | --- | --- | --- |", *rows])


def test_every_constant_has_its_comment():
    assert set(cb.constant_comments()) == set(cb.CONSTANTS)
    assert all(len(text) > 10 for text in cb.constant_comments().values())


def test_help_shows_each_constants_comment(capsys):
    text = " ".join(cb.build_parser().format_help().split())
    for name, comment in cb.constant_comments().items():
        assert " ".join(comment.split()) in text, name


def test_readme_table_is_the_generated_one():
    with open(os.path.join(REPO, "README.md"), encoding="utf-8") as f:
        readme = f.read()
    table = readme.split(START)[1].split(END)[0].strip()
    assert table == constants_markdown(), (
        "README.md's constants table is out of date: replace it with the output of "
        "python -c 'import colorize_base as cb; print(constants_markdown())'")


def test_readme_links_point_to_files():
    for page in ["README.md"] + [os.path.join("docs", f) for f in os.listdir(os.path.join(REPO, "docs"))]:
        with open(os.path.join(REPO, page), encoding="utf-8") as f:
            text = f.read()
        for target in re.findall(r"\]\(([^)#\s]+)", text):
            if "://" not in target:
                assert os.path.exists(os.path.join(REPO, os.path.dirname(page), target)), (page, target)


if __name__ == "__main__":  # python tests/test_docs.py: the table to paste into README.md
    print(constants_markdown())
