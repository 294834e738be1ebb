"""The README and docs/ hold: every `hrpo <subcommand>` they name exists and the flags they pass it parse, every
relative link (and its #anchor) and every repository path they name exists, every config key is documented, and
the README stays short."""

import argparse
import re
from pathlib import Path

import pytest

from hrpo.cli import build_parser
from hrpo.config import config_fields

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
CLI_DOC = ROOT / "docs" / "cli.md"
PAGES = [README, *sorted((ROOT / "docs").glob("*.md"))]
README_MAX_LINES = 200

FENCE = re.compile(r"^```[^\n]*\n(.*?)^```", re.S | re.M)
INLINE = re.compile(r"`([^`\n]+)`")
COMMAND = re.compile(r"(?<![\w./-])hrpo[ \t]+([a-z][\w-]*)")
FLAG = re.compile(r"(?<![\w-])--[a-z][a-z0-9-]*")
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")
# repository paths named in code: top-level folders, and package modules written as hrpo/...
PATH = re.compile(r"(?<![\w./<-])((?:src|tests|benchmarks|experiments|scripts|configs|docs|examples|hrpo)/[\w./-]*)")
SCRIPT = re.compile(r"(?<![\w./-])python[ \t]+((?:benchmarks|experiments|scripts)/[\w./-]+\.py)")


def _text(page: Path) -> str:
    return page.read_text(encoding="utf-8")


def _blocks(text: str) -> list[str]:
    """The fenced code blocks of a Markdown text."""
    return FENCE.findall(text)


def _prose(text: str) -> str:
    """The text outside fenced code blocks."""
    return FENCE.sub("", text)


def _code(text: str) -> list[str]:
    """Every piece of code: fenced blocks, and inline spans outside them."""
    return _blocks(text) + INLINE.findall(_prose(text))


def _commands(text: str) -> list[str]:
    """Command lines in code: a line naming `hrpo <sub>` or `python <script>`, with its continuations (a line
    ending in a backslash, or the indented lines of a usage synopsis) joined; shell comments dropped."""
    commands = []
    for piece in _code(text):
        current = None
        for line in piece.splitlines():
            line = re.sub(r"\s#\s.*$", "", line)
            continued = current is not None and (current.endswith("\\") or line[:1].isspace())
            if continued:
                current = current.rstrip("\\") + " " + line.strip()
                commands[-1] = current
            elif COMMAND.search(line) or SCRIPT.search(line):
                current = line.strip()
                commands.append(current)
            else:
                current = None
    return commands


def _subparsers() -> dict[str, argparse.ArgumentParser]:
    parser = build_parser()
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return dict(action.choices)


def _named_subcommands(pages) -> set[str]:
    return {name for page in pages for piece in _code(_text(page)) for name in COMMAND.findall(piece)}


def _slug(heading: str) -> str:
    """GitHub's anchor of a heading: lower case, punctuation dropped (hyphens and underscores kept), spaces to
    hyphens."""
    text = heading.strip().lower().replace("`", "")
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def _anchors(page: Path) -> set[str]:
    seen: dict[str, int] = {}
    anchors = set()
    for line in _prose(_text(page)).splitlines():
        match = re.match(r"#{1,6}\s+(.*)", line)
        if match:
            slug = _slug(match.group(1))
            count = seen.get(slug, 0)
            seen[slug] = count + 1
            anchors.add(slug if count == 0 else f"{slug}-{count}")
    return anchors


def test_the_readme_is_at_most_200_lines():
    lines = len(_text(README).splitlines())
    assert lines <= README_MAX_LINES, f"README.md has {lines} lines; move detail into docs/"


@pytest.mark.parametrize("subcommand", sorted(_named_subcommands(PAGES)))
def test_every_subcommand_the_docs_name_answers_help(subcommand, capsys):
    from hrpo.cli import main

    with pytest.raises(SystemExit) as stop:
        main([subcommand, "--help"])
    out = capsys.readouterr()
    assert stop.value.code == 0, f"`hrpo {subcommand} --help` exited {stop.value.code}: {out.err.strip()}"
    assert f"hrpo {subcommand}" in out.out


def test_readme_and_cli_doc_name_every_subcommand():
    parsers = set(_subparsers())
    for page in (README, CLI_DOC):
        missing = parsers - _named_subcommands([page])
        assert not missing, f"{page.name} does not name: {', '.join(sorted(missing))}"


def test_the_flags_in_documented_commands_exist():
    parsers = _subparsers()
    options = {name: {s for a in sub._actions for s in a.option_strings} for name, sub in parsers.items()}
    bad = []
    for page in PAGES:
        for command in _commands(_text(page)):
            for match in COMMAND.finditer(command):
                sub = match.group(1)
                if sub not in options:
                    bad.append(f"{page.name}: unknown subcommand in `{command}`")
                    continue
                rest = COMMAND.split(command[match.end():])[0]  # up to a second hrpo command, if any
                bad += [f"{page.name}: `hrpo {sub}` has no {flag} (in `{command}`)"
                        for flag in FLAG.findall(rest) if flag not in options[sub]]
            for script in SCRIPT.findall(command):
                path = ROOT / script
                if not path.is_file():
                    bad.append(f"{page.name}: no script {script}")
                    continue
                source = path.read_text(encoding="utf-8")
                rest = command.split(script, 1)[1]
                bad += [f"{page.name}: {script} has no {flag}" for flag in FLAG.findall(rest)
                        if f'"{flag}"' not in source and f"'{flag}'" not in source]
    assert not bad, "\n".join(bad)


def test_every_relative_link_points_to_an_existing_file_and_anchor():
    bad = []
    for page in PAGES:
        for target in LINK.findall(_prose(_text(page))):
            if re.match(r"[a-z]+:", target):  # https:, mailto:
                continue
            path, _, anchor = target.partition("#")
            file = (page.parent / path).resolve() if path else page
            if not file.exists():
                bad.append(f"{page.relative_to(ROOT)}: link to a missing file: {target}")
            elif anchor and file.suffix == ".md" and anchor not in _anchors(file):
                bad.append(f"{page.relative_to(ROOT)}: link to a missing heading: {target}")
    assert not bad, "\n".join(bad)


def test_every_repository_path_named_in_code_exists():
    bad = []
    for page in PAGES:
        for piece in _code(_text(page)):
            for path in PATH.findall(piece):
                path = path.rstrip(".,")
                where = ROOT / "src" / path if path.startswith("hrpo/") else ROOT / path
                if not where.exists():
                    bad.append(f"{page.relative_to(ROOT)}: {path}")
    assert not bad, "paths named in the docs that do not exist:\n" + "\n".join(bad)


def test_every_config_key_is_documented_in_the_cli_doc():
    text = _text(CLI_DOC)
    missing = [f.name for f in config_fields() if f"`{f.name}`" not in text]
    assert not missing, f"docs/cli.md does not document: {', '.join(missing)}"


def test_every_hrpo_name_in_code_exists():
    import importlib

    import hrpo

    bad = []
    for page in PAGES:
        for piece in _code(_text(page)):
            for dotted in re.findall(r"(?<![\w./-])hrpo((?:\.[A-Za-z_]\w*)+)", piece):
                parts = dotted.strip(".").split(".")
                try:  # the longest importable module, then attributes
                    for i in range(len(parts), 0, -1):
                        try:
                            obj = importlib.import_module("hrpo." + ".".join(parts[:i]))
                            break
                        except ModuleNotFoundError:
                            continue
                    else:
                        obj, i = hrpo, 0
                    for name in parts[i:]:
                        obj = getattr(obj, name)
                except AttributeError:
                    bad.append(f"{page.relative_to(ROOT)}: hrpo{dotted}")
    assert not bad, "names in the docs that hrpo does not have:\n" + "\n".join(bad)
