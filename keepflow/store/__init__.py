from keepflow.store.db import Database, upgrade
from keepflow.store.models import Base, Coupon, Customer, Event, Message, Order

__all__ = ["Base", "Coupon", "Customer", "Database", "Event", "Message", "Order", "upgrade"]
