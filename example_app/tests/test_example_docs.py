"""docs/example.rst lists every route of the shop."""

from __future__ import annotations

import re
from pathlib import Path

from flask import Flask

TOUR = Path(__file__).resolve().parents[2] / "docs" / "example.rst"


def generic(path: str) -> str:
    """``/customers/<int:id>`` and ``/customers/<id>`` both become
    ``/customers/<>``.
    """
    return re.sub(r"<[^>]*>", "<>", path)


def test_the_tour_lists_every_route(app: Flask) -> None:
    text = generic(TOUR.read_text())
    routes = {
        generic(rule.rule)
        for rule in app.url_map.iter_rules()
        if rule.endpoint != "static"
    }
    assert len(routes) == 16
    missing = sorted(route for route in routes if f"``{route}``" not in text)
    missing = [r for r in missing if not re.search(rf"``\w+ {re.escape(r)}``", text)]
    assert missing == []
