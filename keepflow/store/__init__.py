from keepflow.store.db import Database, upgrade
from keepflow.store.models import Base, Coupon, Customer, Delivery, Event, Message, Order, Run

__all__ = ["Base", "Coupon", "Customer", "Database", "Delivery", "Event", "Message", "Order", "Run", "upgrade"]
