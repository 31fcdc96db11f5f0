"""The shop's HTML pages.

Plain reads go to a replica of the cluster they read. The checkout runs
under ``use_primary``, the report under ``use_replica`` (read-only), and a
region's page under ``use_shard`` with the shard named in the URL.
"""

from __future__ import annotations

import functools
import typing as t
import uuid

import sqlalchemy as sa
from flask import abort
from flask import Blueprint
from flask import flash
from flask import redirect
from flask import render_template
from flask import request
from flask import url_for
from flask.typing import ResponseReturnValue

from flask_partition import use_primary
from flask_partition import use_replica
from flask_partition import use_shard

from . import shop
from .models import AuditEvent
from .models import Customer
from .models import db
from .models import Product

bp = Blueprint("shop", __name__)

F = t.TypeVar("F", bound=t.Callable[..., t.Any])


def on_region_shard(view: F) -> F:
    """Run ``view`` on the shard named by the URL's ``region`` argument.

    The name comes from the client, so it is checked against the configured
    shards first: an unknown region is a 404, not a server error. The view
    then runs under :func:`~flask_partition.use_shard`, applied per request
    because the shard is only known then.
    """

    @functools.wraps(view)
    def wrapper(*args: t.Any, **kwargs: t.Any) -> t.Any:
        region = kwargs["region"]
        if region not in shop.shard_names():
            abort(404, description=f"There is no region {region[:64]!r}.")
        return use_shard(region)(view)(*args, **kwargs)

    return t.cast(F, wrapper)


@bp.app_context_processor
def regions() -> dict[str, t.Any]:
    """Every template can link to the regions (shards)."""
    return {"regions": shop.shard_names()}


@bp.get("/")
def index() -> ResponseReturnValue:
    """Products, customers and the newest orders of every shard."""
    products = db.session.scalars(sa.select(Product).order_by(Product.name))
    customers = db.session.scalars(
        sa.select(Customer).order_by(Customer.id.desc()).limit(20)
    )
    orders = shop.latest_orders(5)
    return render_template(
        "index.html",
        products=list(products),
        customers=list(customers),
        orders=orders,
        names=shop.customer_names(orders),
    )


@bp.post("/customers")
def create_customer() -> ResponseReturnValue:
    """Add a customer (default cluster) and an audit event (audit bind)."""
    try:
        customer = shop.create_customer(
            request.form.get("name", ""), request.form.get("email")
        )
    except shop.ShopError as error:
        abort(error.status, description=error.message)
    flash(f"Customer {customer.name} added.")
    return redirect(url_for("shop.index"))


@bp.get("/customers/<int:id>")
def customer(id: int) -> ResponseReturnValue:
    """A customer and their orders, read from the customer's shard."""
    found = db.get_or_404(Customer, id, description=f"There is no customer {id}.")
    return render_template(
        "customer.html",
        customer=found,
        orders=shop.orders_of(id),
        names={found.id: found.name},
        shard=shop.shard_of_customer(id),
    )


@bp.get("/checkout")
def checkout_form() -> ResponseReturnValue:
    """The order form; its reads go to replicas like any page."""
    return _checkout_page(request.args.get("customer_id", type=int))


@bp.post("/checkout")
@use_primary
def checkout() -> ResponseReturnValue:
    """Place an order. Every statement runs on the primaries: the stock is
    read where it is written, and a customer added a moment ago is found
    even if the replica has not replayed it yet.
    """
    customer_id = request.form.get("customer_id", type=int)
    if customer_id is None:
        abort(400, description="Choose a customer.")
    quantities = {
        int(key[len("qty-") :]): request.form.get(key, 0, type=int) or 0
        for key in request.form
        if key.startswith("qty-") and key[len("qty-") :].isdigit()
    }
    try:
        order = shop.place_order(customer_id, quantities)
    except shop.ShopError as error:
        return _checkout_page(customer_id, error=error.message), error.status
    flash(f"Order placed on shard {order.shard}.")
    return redirect(
        url_for("shop.order", customer_id=order.customer_id, order_id=order.id)
    )


def _checkout_page(customer_id: int | None, error: str | None = None) -> str:
    customers = db.session.scalars(sa.select(Customer).order_by(Customer.name))
    products = db.session.scalars(sa.select(Product).order_by(Product.name))
    return render_template(
        "checkout.html",
        customers=list(customers),
        products=list(products),
        selected=customer_id,
        error=error,
    )


@bp.get("/customers/<int:customer_id>/orders/<uuid:order_id>")
def order(customer_id: int, order_id: uuid.UUID) -> ResponseReturnValue:
    """One order, from the customer's shard (see :func:`shop.find_order`)."""
    found = shop.find_order(customer_id, order_id)
    if found is None:
        abort(404, description=f"There is no order {order_id}.")
    return render_template("order.html", order=found, shard=found.shard)


@bp.get("/reports")
@use_replica
def report() -> ResponseReturnValue:
    """Figures over every cluster and shard, read-only: a write anywhere
    below raises ``ReadOnlyError`` before any SQL is sent.
    """
    return render_template("report.html", report=shop.report())


@bp.get("/regions/<region>")
@on_region_shard
@use_replica
def region(region: str) -> ResponseReturnValue:
    """The orders stored on one shard; sharded reads stay on that shard."""
    orders = shop.latest_orders(20)
    count, revenue = shop.order_figures()
    names = shop.customer_names(orders)
    return render_template(
        "region.html",
        region=region,
        orders=orders,
        count=count,
        revenue_cents=revenue,
        names=names,
    )


@bp.get("/audit")
def audit_log() -> ResponseReturnValue:
    """The audit events, newest first, from the audit bind's replica."""
    page = db.paginate(
        sa.select(AuditEvent).order_by(AuditEvent.id.desc()), max_per_page=100
    )
    return render_template("audit.html", page=page)
