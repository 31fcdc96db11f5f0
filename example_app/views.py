"""The shop's views.

Plain reads go to a replica. Writes, and every statement of a view decorated
with ``use_primary``, go to the primaries. ``use_replica`` makes a view
read-only.
"""

from __future__ import annotations

import typing as t

import sqlalchemy as sa
from flask import abort
from flask import Blueprint
from flask import redirect
from flask import render_template_string
from flask import request
from flask import url_for
from flask.typing import ResponseReturnValue
from flask.views import MethodView

from flask_partition import use_primary
from flask_partition import use_replica

from .models import AuditEvent
from .models import Customer
from .models import db

bp = Blueprint("shop", __name__)

INDEX_HTML = """<!doctype html>
<title>Shop</title>
<h1>Customers</h1>
<form method="post" action="{{ url_for('shop.create_customer') }}">
  <input name="name" required> <button>Add</button>
</form>
<ul>
{% for customer in customers %}
  <li><a href="{{ url_for('shop.customer', id=customer.id) }}">{{ customer.name }}</a>
    (visits: {{ customer.visits }})</li>
{% else %}
  <li>No customers yet.</li>
{% endfor %}
</ul>
"""

CUSTOMER_HTML = """<!doctype html>
<title>{{ customer.name }}</title>
<h1>{{ customer.name }}</h1>
<p>Visits: {{ customer.visits }}</p>
<p><a href="{{ url_for('shop.index') }}">All customers</a></p>
"""


def customer_json(customer: Customer) -> dict[str, t.Any]:
    """Return the JSON representation of ``customer``."""
    return {"id": customer.id, "name": customer.name, "visits": customer.visits}


def count(model: type[Customer] | type[AuditEvent]) -> int:
    """Count the rows of ``model``, on the cluster the model lives in."""
    return db.session.execute(
        sa.select(sa.func.count()).select_from(model)
    ).scalar_one()


@bp.get("/")
def index() -> ResponseReturnValue:
    customers = db.session.scalars(sa.select(Customer).order_by(Customer.name))
    return render_template_string(INDEX_HTML, customers=customers)


@bp.post("/customers")
def create_customer() -> ResponseReturnValue:
    name = request.form.get("name", "").strip()
    if not name:
        abort(400, description="The form field 'name' is required.")
    customer = Customer(name=name)
    db.session.add(customer)
    # The flush assigns the id the audit event refers to.
    db.session.flush()
    db.session.add(AuditEvent(customer_id=customer.id, action="created"))
    db.session.commit()
    return redirect(url_for("shop.index"))


@bp.get("/customers/<int:id>")
def customer(id: int) -> ResponseReturnValue:
    return render_template_string(CUSTOMER_HTML, customer=db.get_or_404(Customer, id))


@bp.post("/customers/<int:id>/visit")
@use_primary
def visit(id: int) -> ResponseReturnValue:
    customer = db.get_or_404(Customer, id)
    # Incremented by the database, so concurrent visits are all counted.
    customer.visits = Customer.visits + 1
    db.session.commit()
    return {"id": customer.id, "visits": customer.visits}


@bp.get("/report")
@use_replica
def report() -> ResponseReturnValue:
    return {"customers": count(Customer), "audit_events": count(AuditEvent)}


@bp.get("/api/customers")
def list_customers() -> ResponseReturnValue:
    page = db.paginate(sa.select(Customer).order_by(Customer.id))
    return {
        "items": [customer_json(c) for c in page.items],
        "page": page.page,
        "pages": page.pages,
        "total": page.total,
    }


class CustomerAPI(MethodView):
    """One customer as JSON: read it, or delete it on the primary."""

    init_every_request = False

    def get(self, id: int) -> ResponseReturnValue:
        return customer_json(db.get_or_404(Customer, id))

    @use_primary
    def delete(self, id: int) -> ResponseReturnValue:
        db.session.delete(db.get_or_404(Customer, id))
        db.session.add(AuditEvent(customer_id=id, action="deleted"))
        db.session.commit()
        return "", 204


bp.add_url_rule(
    "/api/customers/<int:id>", view_func=CustomerAPI.as_view("customer_api")
)


@bp.get("/api/health")
async def health() -> ResponseReturnValue:
    return {"status": "ok", "customers": count(Customer)}
