"""The event types Keepflow itself knows, so `keepflow validate` can tell a typo from a shop's own.

An event type nothing sends is not an error at run time: the run simply never starts, never
stops waiting or never ends. So every type a sequence names must be one of these, or be declared
under `events:` in sequences.yaml (a shop's own, sent to `POST /events`).

Kept here, not read from the runtime or the Shopify mapping: the language may import neither.
tests/test_validate_extra.py checks this list against what they produce."""

from __future__ import annotations

BUILTIN_EVENTS: tuple[str, ...] = (
    # Shopify webhooks, and the same names sent to POST /events by any other store.
    "order.created", "order.cancelled", "order.shipped", "order.delivered", "order.refunded",
    "customer.updated",
    # What a store's sign-up sends; Shopify's customers/create arrives as customer.updated.
    "customer.created",
    # Counted as activity and advocacy by the RFM scores.
    "customer.active", "review.submitted", "referral.created",
    # The hourly inactivity scan's event, in the context of a run it starts.
    "customer.inactive",
)
