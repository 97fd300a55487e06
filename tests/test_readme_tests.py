"""The README's reliability section names tests that exist: a renamed or deleted test
would otherwise leave the table pointing at nothing."""

from __future__ import annotations

import re

from tests.support import ROOT

README = (ROOT / "README.md").read_text()


def reliability_section() -> str:
    return README.split("## Reliability", 1)[1].split("\n## ", 1)[0]


def test_every_failure_7_to_20_has_a_row() -> None:
    rows = re.findall(r"^\| (\d+) \|", reliability_section(), flags=re.M)
    assert [int(r) for r in rows] == list(range(7, 21))


def test_every_named_test_exists() -> None:
    section = reliability_section()
    named = 0
    current = ""
    for ref in re.findall(r"`((?:tests/[\w/]+\.py)?(?:::\w+)?)`", section):
        path, _, name = ref.partition("::")
        if path:
            current = path
            assert (ROOT / path).is_file(), path
        if name:
            source = (ROOT / current).read_text()
            assert re.search(rf"^(async )?def {name}\(", source, flags=re.M), f"{current}::{name}"
            named += 1
    assert named >= 25
