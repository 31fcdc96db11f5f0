"""Run by test_transactions_pg.py in a child process: write orders on two
shards in two-phase mode and die during the commit.

Usage: ``python twophase_child.py CONFIG_JSON WHEN`` where ``WHEN`` is
``before-record`` (every shard prepared, no commit record) or
``after-record`` (prepared and recorded, nothing committed).
"""

from __future__ import annotations

import json
import os
import sys
import typing as t

from flask import Flask

import flask_partition.transactions.twophase as transactions
from shard_models import Order
from shard_models import sdb


def main() -> None:
    config, when = json.loads(sys.argv[1]), sys.argv[2]
    app = Flask("twophase-child")
    app.config.update(config)
    sdb.init_app(app)
    record = transactions.write_commit_record

    def die_around_record(router: t.Any, gtrid: str) -> None:
        if when == "after-record":
            record(router, gtrid)
        print(gtrid, flush=True)
        os._exit(3)  # a crash: no cleanup, no rollback

    transactions.write_commit_record = die_around_record
    with app.app_context():
        for order_id, customer_id in config["ORDERS"]:
            sdb.session.add(Order(id=order_id, customer_id=customer_id, amount=1))
        sdb.session.commit()


if __name__ == "__main__":
    main()
