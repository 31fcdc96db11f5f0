"""The shop's JSON API, under ``/api``.

It shows the helpers on :class:`~flask.views.MethodView` classes (per method
and with ``decorators``) and an ``async def`` view (with ``flask[async]``).
"""

from __future__ import annotations

import importlib.util
import typing as t
import uuid

import sqlalchemy as sa
from flask import abort
from flask import Blueprint
from flask import request
from flask import url_for
from flask.typing import ResponseReturnValue
from flask.views import MethodView

from flask_partition import use_primary
from flask_partition import use_replica

from . import shop
from .models import AuditEvent
from .models import Customer
from .models import db
from .models import Order
from .models import Product
from .views import on_region_shard

bp = Blueprint("api", __name__, url_prefix="/api")


def customer_json(customer: Customer) -> dict[str, t.Any]:
    """Return the JSON representation of ``customer``."""
    return {
        "id": customer.id,
        "name": customer.name,
        "email": customer.email,
        "shard": shop.shard_of_customer(customer.id),
    }


def product_json(product: Product) -> dict[str, t.Any]:
    """Return the JSON representation of ``product``."""
    return {
        "id": product.id,
        "name": product.name,
        "price_cents": product.price_cents,
        "stock": product.stock,
    }


def order_json(order: Order) -> dict[str, t.Any]:
    """Return the JSON representation of ``order`` and its lines."""
    return {
        "id": str(order.id),
        "customer_id": order.customer_id,
        "shard": order.shard,
        "total_cents": order.total_cents,
        "created_at": order.created_at.isoformat(),
        "lines": [
            {
                "product_id": line.product_id,
                "product_name": line.product_name,
                "quantity": line.quantity,
                "price_cents": line.price_cents,
            }
            for line in order.lines
        ],
    }


def json_body() -> dict[str, t.Any]:
    """The request's JSON object, or a 400 error."""
    data = request.get_json(silent=True)
    if not isinstance(data, dict):
        abort(400, description="Send a JSON object.")
    return data


@bp.get("/customers")
def list_customers() -> ResponseReturnValue:
    """Customers by id, a page at a time (``?page=2&per_page=10``)."""
    page = db.paginate(sa.select(Customer).order_by(Customer.id), max_per_page=100)
    return {
        "items": [customer_json(c) for c in page.items],
        "page": page.page,
        "pages": page.pages,
        "total": page.total,
    }


@bp.post("/customers")
def create_customer() -> ResponseReturnValue:
    """Add a customer: ``{"name": "Ada", "email": "ada@example.com"}``."""
    data = json_body()
    name, email = data.get("name"), data.get("email")
    if not isinstance(name, str) or not isinstance(email, (str, type(None))):
        abort(400, description="'name' must be a string, 'email' a string or null.")
    try:
        customer = shop.create_customer(name, email)
    except shop.ShopError as error:
        abort(error.status, description=error.message)
    location = url_for("api.customer", id=customer.id)
    return customer_json(customer), 201, {"Location": location}


class CustomerAPI(MethodView):
    """One customer: read it from a replica, or delete it and its orders on
    the primaries.
    """

    init_every_request = False

    def get(self, id: int) -> ResponseReturnValue:
        customer = db.get_or_404(Customer, id, description=f"No customer {id}.")
        return customer_json(customer)

    @use_primary
    def delete(self, id: int) -> ResponseReturnValue:
        customer = db.get_or_404(Customer, id, description=f"No customer {id}.")
        shop.delete_customer(customer)
        return "", 204


bp.add_url_rule("/customers/<int:id>", view_func=CustomerAPI.as_view("customer"))


@bp.get("/products")
def list_products() -> ResponseReturnValue:
    """Every product with its stock, from the default cluster's replica."""
    products = db.session.scalars(sa.select(Product).order_by(Product.id))
    return {"items": [product_json(p) for p in products]}


class OrderAPI(MethodView):
    """List orders, or place one on the primaries (``use_primary`` on
    ``post`` only).
    """

    init_every_request = False

    def get(self) -> ResponseReturnValue:
        """``?customer_id=7``: that customer's orders, from one shard;
        without it, the newest orders of every shard, merged.
        """
        customer_id = request.args.get("customer_id", type=int)
        limit = max(1, min(request.args.get("limit", 20, type=int) or 20, 100))
        if customer_id is None:
            orders = shop.latest_orders(limit)
        else:
            orders = shop.orders_of(customer_id, limit)
        return {"items": [order_json(o) for o in orders]}

    @use_primary
    def post(self) -> ResponseReturnValue:
        """Place an order: ``{"customer_id": 7, "items": [{"product_id":
        1, "quantity": 2}]}``.
        """
        data = json_body()
        customer_id, items = data.get("customer_id"), data.get("items")
        if not isinstance(customer_id, int) or not isinstance(items, list):
            abort(400, description="Send 'customer_id' and a list of 'items'.")
        quantities: dict[int, int] = {}
        for item in items:
            if not (
                isinstance(item, dict)
                and isinstance(item.get("product_id"), int)
                and isinstance(item.get("quantity"), int)
            ):
                abort(400, description="Each item needs 'product_id' and 'quantity'.")
            pid = item["product_id"]
            quantities[pid] = quantities.get(pid, 0) + item["quantity"]
        try:
            order = shop.place_order(customer_id, quantities)
        except shop.ShopError as error:
            abort(error.status, description=error.message)
        location = url_for("api.order", order_id=order.id)
        return order_json(order), 201, {"Location": location}


bp.add_url_rule("/orders", view_func=OrderAPI.as_view("orders"))


@bp.get("/orders/<uuid:order_id>")
def order(order_id: uuid.UUID) -> ResponseReturnValue:
    """One order by id alone: it is looked up on every shard in parallel."""
    return order_json(
        db.get_or_404(Order, order_id, description=f"No order {order_id}.")
    )


class ReportAPI(MethodView):
    """The report as JSON; ``decorators`` makes every method read-only."""

    decorators = [use_replica]
    init_every_request = False

    def get(self) -> ResponseReturnValue:
        return shop.report().as_json()


bp.add_url_rule("/report", view_func=ReportAPI.as_view("report"))


@bp.get("/regions/<region>")
@on_region_shard
@use_replica
def region(region: str) -> ResponseReturnValue:
    """One shard's orders and figures; 404 for a region that is no shard."""
    count, revenue = shop.order_figures()
    return {
        "region": region,
        "orders": count,
        "revenue_cents": revenue,
        "latest": [order_json(o) for o in shop.latest_orders(10)],
    }


#: Flask runs ``async def`` views with asgiref, which ``flask[async]``
#: installs (the ``test`` extra does). A plain ``pip install -e .`` lacks it,
#: and then the health check is served by a plain view instead.
ASYNC_VIEWS = importlib.util.find_spec("asgiref") is not None


def health_figures() -> dict[str, t.Any]:
    """Row counts of each cluster: replicas of the default cluster and the
    audit bind, every shard's replica in parallel.
    """
    orders, _revenue = shop.order_figures()
    return {
        "status": "ok",
        "customers": shop.count(Customer),
        "orders": orders,
        "audit_events": shop.count(AuditEvent),
    }


async def health() -> ResponseReturnValue:
    """The health check as an ``async def`` view: the routing state is a
    context variable, so it follows the coroutine.
    """
    return health_figures()


def sync_health() -> ResponseReturnValue:
    """The health check without ``flask[async]``."""
    return health_figures()


bp.add_url_rule(
    "/health", endpoint="health", view_func=health if ASYNC_VIEWS else sync_health
)
