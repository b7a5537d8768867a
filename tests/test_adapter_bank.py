"""Tests of the adapter store and bank (brogue.server.adapters) on real files and real bank tensors."""

from __future__ import annotations

import asyncio
import shutil
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import Bundle, RuleBasedStateMachine, initialize, invariant, rule
from safetensors.numpy import save_file

from brogue.adapters import TENSORS_FILE, AdapterError, AdapterRef, BaseSpec, publish_adapter
from brogue.engine.adapter_bank import BankTensors
from brogue.adapters.store import AdapterStore
from brogue.server.adapters import AdapterBank, BankFullError

L, D, R, MAX_DIM = 2, 8, 3, 4
FINGERPRINT = "sha256:" + "cd" * 32
BASE = BaseSpec(FINGERPRINT, L, D, MAX_DIM)
BANK_NAMES = ("adapter_ln_weight", "adapter_ln_bias", "adapter_down", "adapter_up")


def make_arrays(seed: int, n_layers: int = L, dim: int = R) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    arrays = {
        "ln_weight": 1 + 0.1 * rng.standard_normal((n_layers, D)),
        "ln_bias": 0.1 * rng.standard_normal((n_layers, D)),
        "down": rng.standard_normal((n_layers, dim, D)),
        "up": rng.standard_normal((n_layers, D, dim)),
    }
    return {name: a.astype(np.float32) for name, a in arrays.items()}


def publish(root: Path, ref: str, seed: int, *, arrays=None, base_fingerprint: str = FINGERPRINT) -> AdapterRef:
    ref = AdapterRef.parse(ref)
    arrays = make_arrays(seed) if arrays is None else arrays
    publish_adapter(root, arrays, name=ref.name, version=ref.version, base_fingerprint=base_fingerprint)
    return ref


def retry(bank: AdapterBank, ref: str, stream_id) -> int:
    """Call ``try_acquire`` until it returns a slot (or raises), as the Triton model's retries do."""
    deadline = time.monotonic() + 10
    while (slot := bank.try_acquire(ref, stream_id=stream_id)) is None:
        assert time.monotonic() < deadline, "the load never finished"
        time.sleep(0.001)
    return slot


def slot_arrays(bank: AdapterBank, slot: int) -> tuple[np.ndarray, ...]:
    return tuple(bank.tensors.arrays[name][slot].copy() for name in BANK_NAMES)


def assert_slot_holds(bank: AdapterBank, slot: int, ref: AdapterRef | str) -> None:
    expected = bank.store.load(ref, BASE).padded(MAX_DIM)
    for got, want in zip(slot_arrays(bank, slot), expected):
        np.testing.assert_array_equal(got, want)


def assert_slot0_identity(bank: AdapterBank) -> None:
    ln_weight, ln_bias, down, up = slot_arrays(bank, 0)
    assert (ln_weight == 1).all() and not ln_bias.any() and not down.any() and not up.any()


def flip_byte(entry: Path) -> None:
    path = entry / TENSORS_FILE
    data = bytearray(path.read_bytes())
    data[-5] ^= 0xFF
    path.write_bytes(bytes(data))


def truncate(entry: Path) -> None:
    path = entry / TENSORS_FILE
    path.write_bytes(path.read_bytes()[:-16])


@pytest.fixture
def root(tmp_path: Path) -> Path:
    root = tmp_path / "store"
    for i, ref in enumerate(["a@v1", "b@v1", "c@v1", "d@v1", "e@v1"]):
        publish(root, ref, seed=i)
    return root


@pytest.fixture
def bank(root: Path):
    """A bank of 3 adapter slots (1..3) over the store ``root``."""
    bank = AdapterBank(AdapterStore(root), BankTensors(L, D, MAX_DIM, slots=4), FINGERPRINT)
    yield bank
    bank.close()


def resident(bank: AdapterBank) -> dict[str, int]:
    return {str(info.ref): slot for slot, info in bank.snapshot().items()}


# --- store ----------------------------------------------------------------------------------------


def test_store_resolve_versions_and_missing(root: Path) -> None:
    store = AdapterStore(root)
    publish(root, "a@v2", seed=9)
    assert store.versions("a") == ["v1", "v2"]
    assert store.versions("zzz") == []
    assert store.resolve("a@v2") == root / "a" / "v2"
    with pytest.raises(AdapterError, match=r"a@v3 is not in the store .*known versions: v1, v2") as info:
        store.resolve("a@v3")
    assert info.value.code == "missing"
    with pytest.raises(AdapterError, match="no adapter named 'zzz'"):
        store.load("zzz@v1", BASE)
    with pytest.raises(ValueError):
        store.versions("../etc")


def test_store_load_refuses_a_renamed_entry(root: Path) -> None:
    store = AdapterStore(root)
    shutil.copytree(root / "a" / "v1", root / "a" / "v9")
    with pytest.raises(AdapterError, match=r"names a@v1, but the entry is stored as a@v9") as info:
        store.load("a@v9", BASE)
    assert info.value.code == "manifest"
    assert store.load("a@v1", BASE).manifest.ref == AdapterRef("a", "v1")


def test_store_list_reports_corrupt_entries_and_skips_partial_ones(root: Path) -> None:
    store = AdapterStore(root)
    (root / "b" / ".v2.partial-123").mkdir()  # a publish in progress
    (root / ".trash").mkdir()
    (root / "c" / "v1" / "manifest.json").write_text("{not json")
    flip_byte(root / "d" / "v1")
    shutil.copytree(root / "e" / "v1", root / "e" / "v2")

    quick = {str(e.ref): e for e in store.list()}
    assert list(quick) == ["a@v1", "b@v1", "c@v1", "d@v1", "e@v1", "e@v2"]
    assert quick["a@v1"].manifest.ref == AdapterRef("a", "v1") and quick["a@v1"].error is None
    assert quick["c@v1"].manifest is None and quick["c@v1"].error.code == "manifest"
    assert quick["d@v1"].error is None  # the manifest alone is fine
    assert quick["e@v2"].error.code == "manifest"  # names e@v1

    full = {str(e.ref): e for e in store.list(BASE)}
    assert full["d@v1"].error.code == "hash_mismatch"
    assert [ref for ref, e in full.items() if e.error is None] == ["a@v1", "b@v1", "e@v1"]


def test_store_publish_arrays_entry_and_file(root: Path, tmp_path: Path) -> None:
    store = AdapterStore(tmp_path / "other")
    m = store.publish(make_arrays(5), base=BASE, name="x")
    assert m.version.startswith("sha-") and m.base_fingerprint == FINGERPRINT
    with pytest.raises(FileExistsError):
        store.publish(make_arrays(5), base=BASE, name="x")

    copied = store.publish(root / "a" / "v1", base=BASE)  # an entry of another store: same name@version
    assert copied.ref == AdapterRef("a", "v1")
    renamed = store.publish(root / "a" / "v1", base=BASE, name="tenant7", version="2024-06")
    assert renamed.ref == AdapterRef("tenant7", "2024-06")
    original = AdapterStore(root).load("a@v1", BASE)
    for ref in ("a@v1", "tenant7@2024-06"):
        np.testing.assert_array_equal(store.load(ref, BASE).down, original.down)

    save_file(make_arrays(6), str(tmp_path / "w.safetensors"))
    assert store.publish(tmp_path / "w.safetensors", base=BASE, name="y", version="v1").dim == R
    assert [str(e.ref) for e in store.list(BASE) if e.error is None] == [
        "a@v1", "tenant7@2024-06", "x@" + m.version, "y@v1"
    ]


def test_store_publish_refuses_invalid_adapters_and_writes_nothing(root: Path, tmp_path: Path) -> None:
    store = AdapterStore(tmp_path / "other")
    with pytest.raises(AdapterError) as info:
        store.publish(make_arrays(1, n_layers=L + 1), base=BASE, name="x", version="v1")
    assert info.value.code == "layers"
    with pytest.raises(AdapterError) as info:
        store.publish(make_arrays(1, dim=MAX_DIM + 1), base=BASE, name="x", version="v1")
    assert info.value.code == "too_large"
    truncate(root / "b" / "v1")
    with pytest.raises(AdapterError) as info:
        store.publish(root / "b" / "v1", base=BASE)
    assert info.value.code == "truncated"
    (tmp_path / "pickle.safetensors").write_bytes(b"\x80\x04" + b"\x00" * 64)
    with pytest.raises(AdapterError) as info:
        store.publish(tmp_path / "pickle.safetensors", base=BASE, name="x")
    assert info.value.code == "not_safetensors"
    with pytest.raises(ValueError, match="needs a name"):
        store.publish(make_arrays(1), base=BASE)
    assert store.list() == []


# --- bank: hits, misses, LRU --------------------------------------------------------------------


def test_hits_misses_and_lru_eviction_order(bank: AdapterBank) -> None:
    for i, ref in enumerate(["a@v1", "b@v1", "c@v1"]):
        assert bank.acquire(ref, stream_id=i) == i + 1  # free slots, lowest first
    for i in range(3):
        bank.release(i)
    assert bank.acquire("a@v1", stream_id="s") == 1  # a hit; a is now the most recently used
    bank.release("s")
    assert bank.stats().hits == 1 and bank.stats().misses == 3 and bank.stats().evictions == 0

    assert bank.acquire("d@v1", stream_id="t") == 2  # evicts b, the least recently used
    assert resident(bank) == {"a@v1": 1, "d@v1": 2, "c@v1": 3}
    bank.prefetch("e@v1").result()  # evicts c (a was used after c)
    assert resident(bank) == {"a@v1": 1, "d@v1": 2, "e@v1": 3}
    for ref, slot in resident(bank).items():
        assert_slot_holds(bank, slot, ref)

    stats = bank.stats()
    assert (stats.hits, stats.misses, stats.loads, stats.evictions, stats.load_errors) == (1, 4, 5, 2, 0)
    assert stats.load_seconds > 0
    assert_slot0_identity(bank)


def test_live_and_pinned_slots_are_never_evicted(bank: AdapterBank) -> None:
    assert bank.pin("a@v1") == 1
    bank.acquire("b@v1", stream_id="s1")
    bank.acquire("c@v1", stream_id="s2")
    bank.acquire("c@v1", stream_id="s3")
    before = [slot_arrays(bank, s) for s in range(4)]

    with pytest.raises(BankFullError) as info:
        bank.acquire("d@v1", stream_id="s4")
    error = info.value
    assert error.code == "bank_full"
    assert str(error) == (
        "cannot load adapter d@v1: all 3 adapter slot(s) are held by live streams or pins "
        "(slot 1 a@v1: pinned; slot 2 b@v1: 1 stream(s); slot 3 c@v1: 2 stream(s)); "
        "end streams, unpin adapters, or serve with more slots"
    )
    with pytest.raises(BankFullError):
        bank.try_acquire("d@v1", stream_id="s4")  # at once, without a load
    with pytest.raises(BankFullError):
        bank.pin("d@v1")
    assert bank.stats().loads == 3
    for s in range(4):
        for got, want in zip(slot_arrays(bank, s), before[s]):
            np.testing.assert_array_equal(got, want)

    bank.release("s2")  # c still has s3
    with pytest.raises(BankFullError):
        bank.acquire("d@v1", stream_id="s4")
    bank.release("s1")
    assert bank.acquire("d@v1", stream_id="s4") == 2  # b's slot: a is pinned, c is live
    bank.unpin("a@v1")
    bank.release("s3")  # c was used after a, so a is evicted first
    assert bank.acquire("e@v1", stream_id="s5") == 1
    assert resident(bank) == {"e@v1": 1, "d@v1": 2, "c@v1": 3}


def test_a_bank_without_adapter_slots(root: Path) -> None:
    bank = AdapterBank(AdapterStore(root), BankTensors(L, D, MAX_DIM, slots=1), FINGERPRINT)
    with pytest.raises(BankFullError, match="no adapter slots"):
        bank.acquire("a@v1", stream_id=1)
    bank.close()


# --- bank: invalid adapters ---------------------------------------------------------------------


@pytest.mark.parametrize("damage, code", [(truncate, "truncated"), (flip_byte, "hash_mismatch")])
def test_a_corrupt_adapter_changes_nothing(bank: AdapterBank, root: Path, damage, code: str) -> None:
    for i, ref in enumerate(["a@v1", "b@v1", "c@v1"]):  # fill every slot; all evictable
        bank.acquire(ref, stream_id=i)
        bank.release(i)
    damage(root / "d" / "v1")
    before_snapshot = bank.snapshot()
    before = [slot_arrays(bank, s) for s in range(4)]

    with pytest.raises(AdapterError) as info:
        bank.acquire("d@v1", stream_id="s")
    assert info.value.code == code
    assert bank.try_acquire("d@v1", stream_id="t") is None  # the load starts in the background
    with pytest.raises(AdapterError):
        retry(bank, "d@v1", "t")  # a retry gets the load's error

    assert bank.snapshot() == before_snapshot
    for s in range(4):
        for got, want in zip(slot_arrays(bank, s), before[s]):
            np.testing.assert_array_equal(got, want)
    stats = bank.stats()
    assert (stats.evictions, stats.load_errors, stats.loads) == (0, 2, 3)
    assert bank.acquire("e@v1", stream_id="s") == 1  # the failed streams were forgotten
    assert bank.acquire("e@v1", stream_id="t") == 1


def test_wrong_base_and_missing_adapters_are_refused(bank: AdapterBank, root: Path) -> None:
    publish(root, "other@v1", seed=1, base_fingerprint="sha256:" + "00" * 32)
    publish(root, "deep@v1", seed=1, arrays=make_arrays(1, n_layers=L + 1))
    for ref, code in [("other@v1", "wrong_base"), ("deep@v1", "layers"), ("nope@v1", "missing")]:
        with pytest.raises(AdapterError) as info:
            bank.acquire(ref, stream_id="s")
        assert info.value.code == code
    assert bank.snapshot() == {} and bank.stats().load_errors == 3
    assert_slot0_identity(bank)


# --- bank: versions, release, concurrency ----------------------------------------------------------


def test_two_versions_side_by_side(bank: AdapterBank, root: Path) -> None:
    publish(root, "a@v2", seed=42)
    old = bank.acquire("a@v1", stream_id="old")
    new = bank.acquire("a@v2", stream_id="new")
    assert old != new
    assert_slot_holds(bank, old, "a@v1")
    assert_slot_holds(bank, new, "a@v2")
    assert not np.array_equal(slot_arrays(bank, old)[2], slot_arrays(bank, new)[2])


def test_release_semantics(bank: AdapterBank) -> None:
    bank.release("never-seen")  # a no-op
    slot = bank.acquire("a@v1", stream_id="s1")
    assert bank.acquire("a@v1", stream_id="s1") == slot  # the same stream again: counted once
    bank.acquire("a@v1", stream_id="s2")
    assert bank.snapshot()[slot].refcount == 2
    with pytest.raises(ValueError, match="already uses adapter a@v1"):
        bank.acquire("b@v1", stream_id="s1")
    bank.release("s1")
    bank.release("s1")
    assert bank.snapshot()[slot].refcount == 1
    bank.release("s2")
    info = bank.snapshot()[slot]
    assert info.refcount == 0 and not info.pinned  # still resident, now evictable
    assert bank.acquire("a@v1", stream_id="s1") == slot
    assert (bank.stats().hits, bank.stats().misses) == (2, 1)


def test_try_acquire_does_not_block(bank: AdapterBank) -> None:
    assert bank.try_acquire("a@v1", stream_id="s") is None
    slot = retry(bank, "a@v1", "s")
    assert slot == 1 and bank.snapshot()[1].refcount == 1
    assert bank.try_acquire("a@v1", stream_id="t") == 1
    assert (bank.stats().misses, bank.stats().hits) == (1, 1)


def test_a_waiting_stream_holds_its_slot_as_soon_as_it_is_written(bank: AdapterBank) -> None:
    assert bank.try_acquire("a@v1", stream_id="s") is None
    bank.prefetch("a@v1").result()
    assert bank.snapshot()[1].refcount == 1  # before the stream asks again
    bank.release("s")
    assert bank.snapshot()[1].refcount == 0


def test_acquire_async(bank: AdapterBank) -> None:
    async def main():
        return await asyncio.gather(*(bank.acquire_async("b@v1", stream_id=i) for i in range(4)))

    assert asyncio.run(main()) == [1, 1, 1, 1]
    assert bank.stats().loads == 1 and bank.snapshot()[1].refcount == 4


def test_concurrent_acquires_of_one_adapter_load_it_once(bank: AdapterBank) -> None:
    barrier = threading.Barrier(8)

    def acquire(i: int) -> int:
        barrier.wait()
        return bank.acquire("c@v1", stream_id=i)

    with ThreadPoolExecutor(8) as pool:
        slots = list(pool.map(acquire, range(8)))
    assert slots == [1] * 8
    stats = bank.stats()
    assert stats.loads == 1 and stats.hits + stats.misses == 8
    assert bank.snapshot()[1].refcount == 8 and len(bank.snapshot()) == 1
    assert_slot_holds(bank, 1, "c@v1")


# --- bank: random sequences ---------------------------------------------------------------------


class BankMachine(RuleBasedStateMachine):
    """Random acquire/release/pin/unpin/prefetch/publish on a 3-slot bank, against a plain model."""

    refs = Bundle("refs")

    def __init__(self):
        super().__init__()
        self.root = Path(tempfile.mkdtemp())
        self.bank = AdapterBank(AdapterStore(self.root), BankTensors(L, D, MAX_DIM, slots=4), FINGERPRINT)
        self.streams: dict[int, AdapterRef] = {}  # live stream -> its adapter
        self.pinned: set[AdapterRef] = set()
        self.next_id = 0
        publish(self.root, "bad@v1", seed=0)
        flip_byte(self.root / "bad" / "v1")

    def teardown(self):
        self.bank.close()
        shutil.rmtree(self.root)

    def _all_held(self) -> bool:
        snap = self.bank.snapshot()
        return len(snap) == 3 and all(info.refcount or info.pinned for info in snap.values())

    @initialize(target=refs)
    def first(self):
        return publish(self.root, "a@v0", seed=0)

    @rule(target=refs, name=st.sampled_from(["a", "b", "c", "d"]), seed=st.integers(0, 2**16))
    def publish_version(self, name, seed):
        self.next_id += 1
        return publish(self.root, f"{name}@v{self.next_id}", seed=seed)

    @rule(ref=refs)
    def acquire(self, ref):
        self.next_id += 1
        try:
            self.bank.acquire(ref, stream_id=self.next_id)
        except BankFullError:
            assert self._all_held() and ref not in {i.ref for i in self.bank.snapshot().values()}
        else:
            self.streams[self.next_id] = ref

    @rule(data=st.data())
    def release(self, data):
        stream_id = data.draw(st.sampled_from(sorted(self.streams) + [-1]))  # -1: never acquired
        self.bank.release(stream_id)
        self.streams.pop(stream_id, None)

    @rule(ref=refs)
    def pin(self, ref):
        try:
            self.bank.pin(ref)
        except BankFullError:
            assert self._all_held()
        else:
            self.pinned.add(ref)

    @rule(ref=refs)
    def unpin(self, ref):
        self.bank.unpin(ref)
        self.pinned.discard(ref)

    @rule(ref=refs)
    def prefetch(self, ref):
        try:
            self.bank.prefetch(ref).result()
        except BankFullError:
            assert self._all_held()

    @rule()
    def acquire_corrupt(self):
        before = self.bank.snapshot()
        arrays = [slot_arrays(self.bank, s) for s in range(4)]
        with pytest.raises((AdapterError, BankFullError)):
            self.bank.acquire("bad@v1", stream_id=-2)
        assert self.bank.snapshot() == before
        for s in range(4):
            assert all(np.array_equal(g, w) for g, w in zip(slot_arrays(self.bank, s), arrays[s]))

    @invariant()
    def every_resident_slot_holds_its_adapter(self):
        snap = self.bank.snapshot()
        assert len({info.ref for info in snap.values()}) == len(snap)
        for slot, info in snap.items():
            assert_slot_holds(self.bank, slot, info.ref)

    @invariant()
    def live_streams_and_pins_are_resident_with_exact_refcounts(self):
        snap = {info.ref: info for info in self.bank.snapshot().values()}
        for ref in set(self.streams.values()) | self.pinned:
            assert ref in snap
        for ref, info in snap.items():
            assert info.refcount == sum(r == ref for r in self.streams.values())
            assert info.pinned == (ref in self.pinned)

    @invariant()
    def slot0_is_the_identity(self):
        assert_slot0_identity(self.bank)


TestBankMachine = BankMachine.TestCase
TestBankMachine.settings = settings(max_examples=30, stateful_step_count=30, deadline=None)
