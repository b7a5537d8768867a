"""Server side of per-tenant adapters: the bank of slots (:mod:`.bank`).

A request names an adapter by :class:`~brogue.adapters.AdapterRef`; the store
(:class:`brogue.adapters.store.AdapterStore`, shared with the offline tools) reads and validates its
weights; :class:`AdapterBank` keeps the hot ones in the slots the encoder reads.
"""

from .bank import AdapterBank, AdapterBankError, BankFullError, BankStats, SlotInfo

__all__ = ["AdapterBank", "AdapterBankError", "BankFullError", "BankStats", "SlotInfo"]
