"""Server side of per-tenant adapters: the store of entries (:mod:`.store`) and the bank of slots (:mod:`.bank`).

A request names an adapter by :class:`~brogue.adapters.AdapterRef`; :class:`AdapterStore` reads and
validates its weights; :class:`AdapterBank` keeps the hot ones in the slots the encoder reads.
"""

from .bank import AdapterBank, AdapterBankError, BankFullError, BankStats, SlotInfo
from .store import AdapterStore, StoreEntry

__all__ = ["AdapterBank", "AdapterBankError", "AdapterStore", "BankFullError", "BankStats", "SlotInfo", "StoreEntry"]
