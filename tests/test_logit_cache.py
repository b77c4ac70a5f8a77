"""Teacher-logit cache (dtkd/engine/logit_cache.py, csrc/kernels/logit_cache.c): the loader's
sample keys, the slot table (float32 bit for bit, float16 as NumPy rounds), the shared file,
two processes filling it at once, and distillation runs with and without it."""
import multiprocessing
import os

import numpy as np
import pytest

import dtkd
from dtkd.nn.grad_mode import no_grad
from dtkd import _C, data, distill, models
from dtkd.config import get_default_config
from dtkd.engine import Trainer
from dtkd.engine.logit_cache import (HEADER_BYTES, LogitCache, default_cache_dir,
                                     open_teacher_cache, teacher_cache_from_config,
                                     teacher_fingerprint)


def tiny_dataset(n=48, classes=5, seed=0, size=32):
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, (n, size, size, 3), dtype=np.uint8)
    labels = rng.integers(0, classes, n)
    # a learnable signal: the label brightens one channel
    images[np.arange(n), :, :, labels % 3] //= 2
    return data.Dataset(images, labels, [f"c{i}" for i in range(classes)])


def rows(seed, n, c=7):
    return np.random.default_rng(seed).standard_normal((n, c)).astype(np.float32) * 10


# ---------------------------------------------------------------------------------------------
# Keys from the loader

def test_batch_unpacks_as_x_y_and_its_keys_rebuild_the_pixels():
    ds = tiny_dataset()
    loader = data.DataLoader(ds, 16, augment=True, seed=3)
    assert loader.variants == 162 and loader.key_space == 48 * 162
    seen = []
    for batch in loader:
        x, y = batch
        assert np.array_equal(y, ds.labels[batch.index])
        assert batch.key.dtype == np.int64 and batch.key.min() >= 0
        assert batch.key.max() < loader.key_space
        # decode the key alone and augment again: the same pixels
        index, variant = np.divmod(batch.key, loader.variants)
        cell, flip = np.divmod(variant, 2)
        offset = np.stack(np.divmod(cell, 9), axis=1) - 4
        assert np.array_equal(index, batch.index) and np.array_equal(offset, batch.offset)
        again = _C.augment_batch(ds.images, index, offset, flip.astype(np.uint8),
                                 loader._mean, loader._std, 32, 32, "NHWC")
        assert np.array_equal(again, x)
        seen.append(batch.key)
    assert len(np.unique(np.concatenate(seen))) == 48  # one variant per sample per epoch


def test_unaugmented_keys_are_the_rows():
    loader = data.DataLoader(tiny_dataset(), 16, augment=False, seed=0)
    assert loader.variants == 1
    batch = next(iter(loader))
    assert np.array_equal(batch.key, batch.index)


def test_fingerprint_follows_pixels_not_order_or_seed():
    ds = tiny_dataset()
    base = data.DataLoader(ds, 16, augment=True, seed=0).fingerprint()
    assert data.DataLoader(ds, 8, augment=True, seed=5).fingerprint() == base
    assert data.DataLoader(ds, 16, augment=False).fingerprint() != base
    assert data.DataLoader(ds, 16, augment=True, padding=2).fingerprint() != base
    assert data.DataLoader(ds, 16, augment=True, normalize=False).fingerprint() != base
    other = tiny_dataset(seed=1)
    assert data.DataLoader(other, 16, augment=True).fingerprint() != base


# ---------------------------------------------------------------------------------------------
# The table

def test_float32_entries_are_served_bit_for_bit_and_stored_once():
    cache = LogitCache.memory(100, 7)
    x = rows(0, 10)
    x[0, 0] = -0.0
    x[1, :] = np.float32(1e-42)  # a float32 subnormal
    keys = np.arange(0, 100, 10)
    assert list(cache.insert(keys, x)) == [1] * 10
    assert list(cache.insert(keys, x + 1)) == [2] * 10  # first come, first kept
    out, hit = cache.lookup(np.concatenate([keys, [1, 2]]))
    assert hit.tolist() == [True] * 10 + [False, False]
    assert out[:10].tobytes() == x.tobytes()
    assert cache.occupancy() == 10
    assert cache.stats["hits"] == 10 and cache.stats["stored"] == 10


def test_float16_entries_round_as_numpy_does():
    cache = LogitCache.memory(64, 9, dtype="float16")
    rng = np.random.default_rng(1)
    x = np.clip(rng.standard_normal((8, 9)) * np.logspace(-9, 4.8, 8)[:, None], -6e4, 6e4)
    x = x.astype(np.float32)
    # ties to even, subnormals, the largest finite half and the rounding boundary below Inf
    x[0, :5] = [1 + 2 ** -11, 1 + 3 * 2 ** -11, 2 ** -25, 3 * 2 ** -25, -0.0]
    x[1, :3] = [65504, 65519.99, -6.1e-5]
    status = cache.insert(np.arange(8), x)
    assert status.tolist() == [1] * 8
    out, hit = cache.lookup(np.arange(8))
    assert hit.all()
    want = x.astype(np.float16).astype(np.float32)
    assert out.tobytes() == want.tobytes()
    assert cache.round(x).tobytes() == want.tobytes()


def test_rows_float16_cannot_hold_and_non_finite_rows_are_not_stored():
    half = LogitCache.memory(8, 3, dtype="float16")
    x = np.array([[1, 2, 65520], [1, np.nan, 0], [1, 2, 3]], np.float32)
    assert half.insert([0, 1, 2], x).tolist() == [4, 4, 1]
    assert half.lookup([0, 1, 2])[1].tolist() == [False, False, True]
    # round() leaves such rows alone, so a served row is what would be computed
    assert half.round(x)[0].tolist() == [1, 2, 65520]
    full = LogitCache.memory(8, 3)
    assert full.insert([0, 1], x[:2]).tolist() == [1, 4]


def test_a_table_smaller_than_its_keys_is_set_associative_first_come_first_kept():
    slot = _C.logit_cache_slot_bytes(7, False)
    cache = LogitCache.memory(10_000, 7, max_bytes=8 * slot * 4)  # 4 sets of 8 ways
    assert not cache.header["direct"] and cache.header["nsets"] == 4
    keys = np.arange(200)
    x = rows(2, 200)
    status = cache.insert(keys, x)
    assert (status == 1).sum() == 32 and (status == 3).sum() == 168  # the rest found sets full
    out, hit = cache.lookup(keys)
    assert np.array_equal(hit, status == 1)
    assert out[hit].tobytes() == x[hit].tobytes()
    assert cache.occupancy() == 32
    with pytest.raises(ValueError, match="max_bytes"):
        LogitCache.memory(10_000, 7, max_bytes=slot)


def test_bad_arguments_name_themselves():
    cache = LogitCache.memory(10, 7)
    with pytest.raises(ValueError, match="keys: must be in"):
        cache.lookup([10])
    with pytest.raises(ValueError, match="logits: expected shape"):
        cache.insert([1], np.zeros((1, 6), np.float32))
    with pytest.raises(ValueError, match="dtype"):
        LogitCache.memory(10, 7, dtype="bfloat16")
    small = np.zeros(64, np.uint8)
    with pytest.raises(ValueError, match="table: 64 bytes"):
        _C.logit_cache_lookup(small, (10, 1, 40, 7, 1, 0), np.zeros(1, np.int64))
    with pytest.raises(ValueError, match="geometry"):
        _C.logit_cache_lookup(small, (1, 1, 8, 7, 1, 0), np.zeros(1, np.int64))
    with pytest.raises(ValueError, match="writable"):
        small.flags.writeable = False
        _C.logit_cache_insert(small, (1, 1, 40, 7, 1, 0), np.zeros((1, 7), np.float32),
                              np.zeros(1, np.int64), None)


# ---------------------------------------------------------------------------------------------
# The file, and two processes at once

def test_file_is_shared_between_openers_and_checked(tmp_path):
    path = tmp_path / "t.logits"
    a = LogitCache.open(path, 50, 7, dataset="d", teacher="t")
    x = rows(3, 5)
    a.insert([1, 2, 3, 4, 5], x)
    b = LogitCache.open(path, 50, 7, dataset="d", teacher="t")
    out, hit = b.lookup([1, 2, 3, 4, 5, 6])
    assert hit.tolist() == [True] * 5 + [False]
    assert out[:5].tobytes() == x.tobytes()
    # sparse: only the header and the written slots take space
    assert os.path.getsize(path) == HEADER_BYTES + 50 * a.geometry[2]
    with pytest.raises(ValueError, match="teacher 't', not 'u'"):
        LogitCache.open(path, 50, 7, dataset="d", teacher="u")
    (tmp_path / "bad.logits").write_bytes(b"x" * 100)
    with pytest.raises(ValueError, match="not a dtkd teacher-logit cache"):
        LogitCache.open(tmp_path / "bad.logits", 50, 7)
    assert not [p for p in os.listdir(tmp_path) if p.endswith(".tmp")]


def _fill(path, keys, start):
    """Child process: wait for the start signal, then open (or create) the file and insert."""
    start.wait()
    cache = LogitCache.open(path, 40000, 7, dataset="d", teacher="t")
    for chunk in np.array_split(np.asarray(keys), 300):
        status = cache.insert(chunk, key_rows(chunk))
        out, hit = cache.lookup(chunk)  # what this process reads back is never torn
        assert hit[status == 1].all()
        assert out[hit].tobytes() == key_rows(chunk[hit]).tobytes()
    return cache.stats["stored"]


def key_rows(keys):
    """Logits that are a function of the key, so any torn or misplaced entry shows."""
    keys = np.asarray(keys, np.float32)[:, None]
    return (keys * 1.5 + np.arange(7, dtype=np.float32)).astype(np.float32)


@pytest.mark.parametrize("max_mb", [None, "small"])
def test_two_processes_filling_at_once_store_every_key_once_untorn(tmp_path, max_mb):
    path = tmp_path / "shared.logits"
    ctx = multiprocessing.get_context("spawn")
    if max_mb == "small":  # make the file set-associative first, so both writers share sets
        LogitCache.open(path, 40000, 7, max_bytes=_C.logit_cache_slot_bytes(7, False) * 8 * 3000,
                        dataset="d", teacher="t").close()
    keys = np.arange(30000)
    # overlapping key sets in different orders: 10000 keys both write
    first, second = keys[:20000], keys[10000:][::-1].copy()
    with ctx.Manager() as manager:
        start = manager.Event()
        with ctx.Pool(2) as pool:
            jobs = [pool.apply_async(_fill, (path, k, start)) for k in (first, second)]
            start.set()
            stored = [job.get(timeout=120) for job in jobs]
    cache = LogitCache.open(path, 40000, 7, dataset="d", teacher="t")
    out, hit = cache.lookup(keys)
    assert out[hit].tobytes() == key_rows(keys[hit]).tobytes()
    # every tag that is set is a published key, and no key is in two slots
    nslots, slot_bytes = cache.geometry[0] * cache.geometry[1], cache.geometry[2]
    tags = np.ndarray((nslots,), np.uint64, cache._table, 0, (slot_bytes,))
    tags = tags[tags != 0]
    assert np.all(tags & np.uint64(3) == 2)
    stored_keys = (tags >> np.uint64(2)) - np.uint64(1)
    assert len(np.unique(stored_keys)) == len(stored_keys) == sum(stored) == hit.sum()
    if max_mb is None:
        assert hit.all()  # direct-mapped: everything fits


# ---------------------------------------------------------------------------------------------
# The teacher and the distillers

def test_teacher_gives_each_sample_the_same_bits_in_any_batch_and_thread_count():
    teacher = models.create("resnet8", num_classes=5, seed=1)
    teacher.eval()
    x = np.random.default_rng(0).standard_normal((12, 3, 32, 32)).astype(np.float32)
    with no_grad():
        whole = teacher.forward(x)
        for lo, hi in ((0, 1), (3, 10), (11, 12)):
            assert teacher.forward(np.ascontiguousarray(x[lo:hi])).tobytes() == whole[lo:hi].tobytes()
        threads = dtkd.get_num_threads()
        try:
            dtkd.set_num_threads(2)
            assert teacher.forward(x).tobytes() == whole.tobytes()
        finally:
            dtkd.set_num_threads(threads)


@pytest.mark.parametrize("dtype", ["float32", "float16"])
def test_distiller_serves_what_recomputation_gives(tmp_path, dtype):
    ds = tiny_dataset()
    loader = data.DataLoader(ds, 16, augment=True, seed=0)
    teacher = models.create("resnet8", num_classes=5, seed=1)
    kd = distill.KD(models.create("resnet8", num_classes=5, seed=2), teacher)
    kd.teacher_cache = open_teacher_cache(loader, teacher, 5, dtype=dtype, directory=tmp_path)
    start = loader.state_dict()
    for again in (False, True):  # the first pass computes and stores, the second reads
        loader.load_state_dict(start)
        for batch in loader:
            x, _ = batch
            served, hits = kd._teacher_logits(x, batch.key)
            assert hits == (len(x) if again else 0)
            fresh = kd.teacher_logits(x)  # no keys: the teacher runs
            if dtype == "float32":
                assert served.tobytes() == fresh.tobytes()
            else:
                assert served.tobytes() == fresh.astype(np.float16).astype(np.float32).tobytes()


def test_teacher_fingerprint_changes_with_any_weight():
    teacher = models.create("resnet8", num_classes=5, seed=1)
    before = teacher_fingerprint(teacher)
    assert teacher_fingerprint(models.create("resnet8", num_classes=5, seed=1)) == before
    state = teacher.state_dict()
    name = sorted(state)[3]
    state[name] = state[name].copy()
    state[name].flat[0] += 1e-6
    teacher.load_state_dict(state)
    assert teacher_fingerprint(teacher) != before


def test_teacher_fingerprint_changes_with_what_rounds_the_logits(monkeypatch):
    """Another SIMD path, K blocking, convolution algorithm or build gives logits that differ
    in their last bits: none of them may be served another's entries."""
    from dtkd import _C
    from dtkd.nn.conv import set_conv_algorithm
    teacher = models.create("resnet8", num_classes=5, seed=1)
    before = teacher_fingerprint(teacher)
    previous = set_conv_algorithm("direct")
    try:
        assert teacher_fingerprint(teacher) != before
    finally:
        set_conv_algorithm(previous)
    assert teacher_fingerprint(teacher) == before
    isa = _C.cpu_features()["isa"]
    kc = _C.sgemm_configs(isa)["kernels"][0]["kc"]
    try:
        _C.sgemm_set_blocking(isa, 0, kc + 16, 96, 2048)
        assert teacher_fingerprint(teacher) != before
    finally:
        for i in range(len(_C.sgemm_configs(isa)["kernels"])):
            _C.sgemm_set_blocking(isa, i, 0, 0, 0)
    assert teacher_fingerprint(teacher) == before
    assert len(_C.BUILD_ID) == 16
    monkeypatch.setattr(_C, "BUILD_ID", "0" * 16)
    assert teacher_fingerprint(teacher) != before
    monkeypatch.undo()
    if isa != "scalar":
        _C.set_isa("scalar")
        try:
            assert teacher_fingerprint(teacher) != before
        finally:
            _C.set_isa(isa)


def run(tmp_path, name, cache_mode, dtype="float32", epochs=2):
    """A KD run resnet8 -> resnet8 on tiny data; returns (summary, history, student weights,
    distiller)."""
    cfg = get_default_config()
    cfg.SOLVER.EPOCHS = epochs
    cfg.SOLVER.BATCH_SIZE = 16
    cfg.SOLVER.LR = 0.05
    cfg.LOG.PROBE_SAMPLES = 0
    cfg.DISTILLER.TEACHER_CACHE = cache_mode
    cfg.DISTILLER.TEACHER_CACHE_DTYPE = dtype
    cfg.DISTILLER.TEACHER_CACHE_DIR = str(tmp_path / "cache")
    ds = tiny_dataset()
    train = data.DataLoader(ds, 16, augment=True, seed=7)
    val = data.DataLoader(tiny_dataset(n=32, seed=9), 16, shuffle=False)
    teacher = models.create("resnet8", num_classes=5, seed=1)
    teacher.eval()
    kd = distill.KD(models.create("resnet8", num_classes=5, seed=2), teacher)
    kd.teacher_cache, _ = teacher_cache_from_config(cfg, kd, train)
    trainer = Trainer(cfg, kd, train, val, tmp_path / name, progress=False)
    summary = trainer.train()
    return summary, trainer.history, kd.student.state_dict(), kd


def test_runs_with_and_without_the_cache_train_identically(tmp_path):
    plain, plain_hist, plain_w, kd = run(tmp_path, "plain", "off")
    assert kd.teacher_cache is None and "n_teacher_cache_hits" not in plain_hist[0]
    fill, fill_hist, fill_w, kd1 = run(tmp_path, "fill", "disk")
    reuse, reuse_hist, reuse_w, kd2 = run(tmp_path, "reuse", "disk")
    for summary, weights in ((fill, fill_w), (reuse, reuse_w)):
        assert summary["best_acc"] == plain["best_acc"] and summary["last_acc"] == plain["last_acc"]
        assert all(weights[k].tobytes() == plain_w[k].tobytes() for k in plain_w)
    assert [r["train_loss"] for r in reuse_hist] == [r["train_loss"] for r in plain_hist]
    # the second run of the "sweep" read every teacher row from the first's file
    assert sum(r["n_teacher_cache_hits"] for r in reuse_hist) == 2 * 48
    assert sum(r["n_teacher_cache_lookups"] for r in fill_hist) == 2 * 48
    assert kd1.teacher_cache.path == kd2.teacher_cache.path


def test_float16_cache_runs_agree_with_each_other(tmp_path):
    fill = run(tmp_path, "fill", "memory", dtype="float16")
    reuse = run(tmp_path, "reuse", "memory", dtype="float16")
    assert sum(r["n_teacher_cache_hits"] for r in reuse[1]) == 2 * 48
    assert fill[0]["last_acc"] == reuse[0]["last_acc"]
    assert all(fill[2][k].tobytes() == reuse[2][k].tobytes() for k in fill[2])


def test_config_auto_is_disk_where_safe_off_otherwise(tmp_path):
    cfg = get_default_config()
    assert cfg.DISTILLER.TEACHER_CACHE == "auto"
    cfg.DISTILLER.TEACHER_CACHE_DIR = str(tmp_path)
    loader = data.DataLoader(tiny_dataset(), 16, augment=True)
    teacher = models.create("resnet8", num_classes=5, seed=1)
    kd = distill.KD(models.create("resnet8", num_classes=5, seed=2), teacher)
    cache, why = teacher_cache_from_config(cfg, kd, loader)
    assert cache is not None and cache.path.parent == tmp_path and why.startswith("auto")
    # a plain iterable of (x, y) does not name its samples: auto stays off, disk refuses
    cache, why = teacher_cache_from_config(cfg, kd, [(None, None)])
    assert cache is None and "does not name its samples" in why
    cfg.DISTILLER.TEACHER_CACHE = "disk"
    with pytest.raises(ValueError, match="TEACHER_CACHE disk: unsafe here"):
        teacher_cache_from_config(cfg, kd, [(None, None)])
    class OwnStep(distill.KD):  # a distiller whose train_step cannot pass keys on
        def train_step(self, x, y, epoch):
            return super().train_step(x, y, epoch)

    cfg.DISTILLER.TEACHER_CACHE = "auto"
    cache, why = teacher_cache_from_config(cfg, OwnStep(kd.student, teacher), loader)
    assert cache is None and "train_step takes no keys" in why
    kd.teacher_is_frozen = False
    assert teacher_cache_from_config(cfg, kd, loader)[0] is None
    cfg.DISTILLER.TEACHER_CACHE = "off"
    assert teacher_cache_from_config(cfg, kd, loader)[0] is None
    assert teacher_cache_from_config(cfg, distill.Vanilla(teacher), loader)[0] is None


def test_the_suite_never_writes_the_users_cache_directory():
    # tests/conftest.py points XDG_CACHE_HOME at a per-session temporary directory, so runs that
    # use the default teacher-logit cache cannot leave (or read) files under ~/.cache/dtkd
    home_cache = os.path.join(os.path.expanduser("~"), ".cache")
    default = str(default_cache_dir())
    assert not default.startswith(home_cache + os.sep), default
    assert os.environ["XDG_CACHE_HOME"] in default
