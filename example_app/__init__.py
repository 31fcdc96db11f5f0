"""A small multi-tenant shop on Flask-Partition.

-   Customers and products live in the default cluster: a primary and a
    read replica.
-   The audit log lives in the ``audit`` bind, a database of its own.
-   Orders are sharded by customer over ``eu`` and ``us``.

``flask --app example_app run`` needs no setup: every database is a SQLite
file in the instance folder, and each "replica" is its primary's file opened
read-only. With ``PARTITION_DATABASE_URI`` in the environment it runs on the
databases the ``PARTITION_*`` variables name instead, for example the
PostgreSQL servers of ``flask --app example_app partition dev-cluster``.
"""

from __future__ import annotations

import json
import os
import typing as t

from flask import Flask
from flask import render_template
from flask import request
from flask.typing import ResponseReturnValue
from werkzeug.exceptions import HTTPException

from flask_partition.config import mask_uri

from .models import db

#: The shards of the embedded setup; each is a SQLite file of its own.
SQLITE_SHARDS: t.Final = ("eu", "us")


def sqlite_config() -> dict[str, t.Any]:
    """The embedded setup: SQLite files in the instance folder, each
    "replica" the primary's own file, which Flask-Partition opens read-only.
    """
    return {
        "PARTITION_DATABASE_URI": "sqlite:///shop.db",
        "PARTITION_REPLICAS": ["sqlite:///shop.db"],
        "PARTITION_BINDS": {
            "audit": {
                "primary": "sqlite:///audit.db",
                "replicas": ["sqlite:///audit.db"],
            }
        },
        "PARTITION_SHARDS": {
            name: {
                "primary": f"sqlite:///orders-{name}.db",
                "replicas": [f"sqlite:///orders-{name}.db"],
            }
            for name in SQLITE_SHARDS
        },
    }


def create_app(test_config: t.Mapping[str, t.Any] | None = None) -> Flask:
    """Create and configure the shop.

    Configuration comes, in increasing priority, from ``instance/config.py``
    and the ``FLASK_*`` environment variables such as ``FLASK_SECRET_KEY``
    (both only when there is no ``test_config``), the ``PARTITION_*`` environment
    variables (see :func:`config_from_environ`) and ``test_config``. When
    none of them sets ``PARTITION_DATABASE_URI``, the SQLite files of
    :func:`sqlite_config` fill in every missing ``PARTITION_*`` key.

    ``SHOP_CREATE_TABLES`` (default: true when every primary is SQLite)
    creates the tables and the demo products at start-up. On other databases
    run ``flask --app example_app partition create-all`` once instead.

    :param test_config: Config that overrides everything else, for tests.
    :raises RuntimeError: If the ``audit`` bind or the shards are missing.
    """
    app = Flask(__name__, instance_relative_config=True)
    app.config.from_mapping(SECRET_KEY="dev")
    if test_config is None:
        app.config.from_pyfile("config.py", silent=True)
        # FLASK_SECRET_KEY and the other FLASK_* variables: never run with
        # the "dev" key outside your machine.
        app.config.from_prefixed_env()
    app.config.update(config_from_environ(os.environ))
    if test_config is not None:
        app.config.from_mapping(test_config)
    if "PARTITION_DATABASE_URI" not in app.config:
        for key, value in sqlite_config().items():
            app.config.setdefault(key, value)
    _check_clusters(app)

    os.makedirs(app.instance_path, exist_ok=True)
    db.init_app(app)

    from . import api
    from . import commands
    from . import views

    app.register_blueprint(views.bp)
    app.register_blueprint(api.bp)
    app.cli.add_command(commands.seed_command)
    app.add_template_filter(money)
    app.register_error_handler(HTTPException, http_error)

    router = db.get_router(app)
    embedded = all(
        cluster.primary.dialect.name == "sqlite"
        for cluster in [*router.clusters.values(), *router.shards.values()]
    )
    if app.config.get("SHOP_CREATE_TABLES", embedded):
        from .shop import add_demo_products

        with app.app_context():
            db.create_all()
            add_demo_products()
    return app


def _check_clusters(app: Flask) -> None:
    binds = app.config.get("PARTITION_BINDS") or {}
    shards = app.config.get("PARTITION_SHARDS") or {}
    missing = []
    if "audit" not in binds:
        missing.append("a bind 'audit' in 'PARTITION_BINDS'")
    if not shards:
        missing.append("shards in 'PARTITION_SHARDS'")
    if missing:
        raise RuntimeError(
            f"The shop needs {' and '.join(missing)}. Set them along with"
            " 'PARTITION_DATABASE_URI' (the output of 'flask --app example_app"
            " partition dev-cluster' sets all of them), or unset"
            " 'PARTITION_DATABASE_URI' to use SQLite files in the instance folder."
        )


def money(cents: int | None) -> str:
    """Format an amount in cents: ``2400`` becomes ``24.00``."""
    return f"{(cents or 0) / 100:,.2f}"


def http_error(error: HTTPException) -> ResponseReturnValue:
    """Answer API requests with JSON, the pages with an HTML page."""
    status = error.code or 500
    if request.path.startswith("/api/"):
        return {"error": error.description}, status
    return render_template("error.html", error=error), status


# -- configuration from the environment -----------------------------------------

_STRINGS = ("PARTITION_DATABASE_URI", "PARTITION_REPLICA_POLICY")
_JSON_OBJECTS = ("PARTITION_ENGINE_OPTIONS",)
_CLUSTER_MAPS = ("PARTITION_BINDS", "PARTITION_SHARDS")


def config_from_environ(environ: t.Mapping[str, str]) -> dict[str, t.Any]:
    """Read ``PARTITION_*`` configuration from environment variables.

    =============================  ==========================================
    Variable                       Value
    =============================  ==========================================
    ``PARTITION_DATABASE_URI``     a URI
    ``PARTITION_REPLICAS``         a JSON list, or URIs separated by commas
    ``PARTITION_BINDS``            a JSON object as in the config, or
                                   ``name=uri`` pairs separated by commas
    ``PARTITION_SHARDS``           the same, for shards
    ``PARTITION_AUDIT_URI``        shortcut for the ``audit`` bind's URI
    ``PARTITION_REPLICA_POLICY``   ``round_robin`` or ``random``
    ``PARTITION_SCATTER_WORKERS``  an integer
    ``PARTITION_ENGINE_OPTIONS``   a JSON object
    =============================  ==========================================

    Use JSON for a cluster with replicas, and for URIs that contain commas.
    Flask-Partition validates the values in ``init_app``.

    :param environ: The environment, usually :data:`os.environ`.
    :raises ValueError: A value that cannot be read; the variable is named
        and passwords are masked.
    """
    config: dict[str, t.Any] = {}
    for name in _STRINGS:
        if name in environ:
            config[name] = environ[name]
    if "PARTITION_REPLICAS" in environ:
        config["PARTITION_REPLICAS"] = _uri_list(environ, "PARTITION_REPLICAS")
    for name in _CLUSTER_MAPS:
        if name in environ:
            config[name] = _cluster_map(environ, name)
    if "PARTITION_AUDIT_URI" in environ:
        binds = dict(config.get("PARTITION_BINDS", {}))
        binds["audit"] = environ["PARTITION_AUDIT_URI"]
        config["PARTITION_BINDS"] = binds
    for name in _JSON_OBJECTS:
        if name in environ:
            config[name] = _json(environ, name, dict, "a JSON object")
    if "PARTITION_SCATTER_WORKERS" in environ:
        value = environ["PARTITION_SCATTER_WORKERS"].strip()
        if not value.isdigit():
            raise ValueError(
                "The environment variable 'PARTITION_SCATTER_WORKERS' must be an"
                f" integer, got {value!r}."
            )
        config["PARTITION_SCATTER_WORKERS"] = int(value)
    return config


def _json(environ: t.Mapping[str, str], name: str, kind: type, noun: str) -> t.Any:
    try:
        value = json.loads(environ[name])
    except ValueError:
        value = None
    if not isinstance(value, kind):
        raise ValueError(
            f"The environment variable {name!r} must be {noun}, got"
            f" {mask_uri(environ[name])!r}."
        )
    return value


def _uri_list(environ: t.Mapping[str, str], name: str) -> list[t.Any]:
    text = environ[name].strip()
    if text.startswith("["):
        return list(_json(environ, name, list, "a JSON list of URIs"))
    return [uri.strip() for uri in text.split(",") if uri.strip()]


def _cluster_map(environ: t.Mapping[str, str], name: str) -> dict[str, t.Any]:
    text = environ[name].strip()
    if text.startswith("{"):
        return dict(_json(environ, name, dict, "a JSON object"))
    clusters: dict[str, t.Any] = {}
    for item in (part.strip() for part in text.split(",")):
        if not item:
            continue
        key, sep, uri = item.partition("=")
        if not sep or not key.strip() or not uri.strip():
            raise ValueError(
                f"The environment variable {name!r} must be a JSON object or"
                " 'name=uri' pairs separated by commas, got"
                f" {mask_uri(environ[name])!r}."
            )
        clusters[key.strip()] = uri.strip()
    return clusters
