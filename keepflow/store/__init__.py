import keepflow.store.scores  # noqa: E402,F401  (registers customer_scores and score_cutoffs on Base.metadata)
import keepflow.store.access  # noqa: E402,F401  (registers users and audit on Base.metadata)
import keepflow.store.definitions  # noqa: E402,F401  (registers definitions and definition_sequences)
import keepflow.store.payload_parts  # noqa: E402,F401  (registers payload_parts)
import keepflow.store.line_friends  # noqa: E402,F401  (registers line_friends)
from keepflow.store.db import Database, insert_new, upgrade, utc
from keepflow.store.models import Base, Coupon, Customer, Delivery, Event, Message, Order, Run
from keepflow.store.suppressions import Suppression  # noqa: E402

__all__ = ["Base", "Coupon", "Customer", "Database", "Delivery", "Event", "Message", "Order", "Run", "Suppression", "insert_new", "upgrade", "utc"]
