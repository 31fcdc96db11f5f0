"""The README's first command: ``flask --app example_app run`` serves the
shop on SQLite files it creates in a fresh instance folder.
"""

from __future__ import annotations

import json
import socket
import subprocess
import time
import typing as t
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

from example_app.tests.shop_support import copy_example
from example_app.tests.shop_support import flask_command


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


#: Keeps the session cookie, which carries the flashed messages.
browser = urllib.request.build_opener(urllib.request.HTTPCookieProcessor())


def fetch(url: str, data: dict[str, str] | None = None) -> tuple[int, str, str]:
    """GET (or POST ``data``) and follow redirects, like a browser; return
    the final status, URL and body.
    """
    body = urllib.parse.urlencode(data).encode() if data is not None else None
    try:
        with browser.open(url, data=body, timeout=10) as response:
            return response.status, response.url, response.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, url, error.read().decode()


def test_flask_run_serves_every_page(tmp_path: Path) -> None:
    env = copy_example(tmp_path)
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    with open(tmp_path / "server.log", "w") as log:
        server = subprocess.Popen(
            [flask_command(), "--app", "example_app", "run", "--port", str(port)],
            cwd=tmp_path,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                status, _, page = fetch(f"{base}/")
                break
            except OSError:
                assert server.poll() is None, (tmp_path / "server.log").read_text()
                assert time.monotonic() < deadline, "the server did not start"
                time.sleep(0.1)
        assert status == 200
        assert "Espresso beans, 1 kg" in page and "No customers yet." in page

        status, url, page = fetch(f"{base}/customers", {"name": "Ada"})
        assert (status, url) == (200, f"{base}/")
        assert "Customer Ada added." in page

        status, url, page = fetch(
            f"{base}/checkout", {"customer_id": "1", "qty-1": "2"}
        )
        assert status == 200 and url.startswith(f"{base}/customers/1/orders/")
        assert "Order placed on shard" in page and "48.00" in page

        pages = {
            "/checkout?customer_id=1": "Place order",
            "/customers/1": "Ada",
            "/reports": "Espresso beans, 1 kg: 2 sold",
            "/regions/eu": "Region eu",
            "/regions/us": "Region us",
            "/audit": "order.placed",
            "/static/style.css": "font",
        }
        for path, text in pages.items():
            status, _, page = fetch(f"{base}{path}")
            assert status == 200, path
            assert text in page, path
        assert fetch(f"{base}/regions/mars")[0] == 404

        documents: dict[str, t.Any] = {}
        for path in ("/api/customers", "/api/products", "/api/orders", "/api/report"):
            status, _, body = fetch(f"{base}{path}")
            assert status == 200, path
            documents[path] = json.loads(body)
        assert documents["/api/customers"]["total"] == 1
        assert documents["/api/report"]["orders"] == 1
        order = documents["/api/orders"]["items"][0]
        status, _, body = fetch(f"{base}/api/orders/{order['id']}")
        assert status == 200 and json.loads(body)["total_cents"] == 4800
        status, _, body = fetch(f"{base}/api/health")
        assert json.loads(body) == {
            "status": "ok",
            "customers": 1,
            "orders": 1,
            "audit_events": 2,
        }
    finally:
        server.terminate()
        server.wait(timeout=10)
    instance = tmp_path / "instance"
    assert {p.name for p in instance.iterdir()} == {
        "shop.db",
        "audit.db",
        "orders-eu.db",
        "orders-us.db",
    }
