"""`refresh_scores`: recompute every customer's RFM scores (see keepflow/insights/rfm.py)."""

from __future__ import annotations

from datetime import datetime

from temporalio import activity

from keepflow.insights import rfm
from keepflow.store import Database


class ScoresRefresher:
    def __init__(self, db: Database):
        self.db = db

    @activity.defn(name="refresh_scores")
    def refresh_scores(self, as_of: datetime) -> int:
        return rfm.refresh_all(self.db, as_of)
