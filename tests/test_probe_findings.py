"""Issue 13's probe findings ("What a probe of ~12,000 bad inputs already found"), one test per
finding, named after what the fix guarantees. The fuzz harnesses (tests/fuzz) no longer list
these as KNOWN, so they enforce the same fixes on random inputs."""
import subprocess
import sys
import textwrap

import numpy as np
import pytest

import dtkd
from dtkd import losses


# ---- threads -------------------------------------------------------------------------------

@pytest.mark.parametrize("n", [10 ** 6, dtkd.MAX_THREADS + 1, 2 ** 31, 10 ** 30, 0, -3])
def test_set_num_threads_refuses_counts_outside_1_to_max_threads(n):
    before = dtkd.get_num_threads()
    with pytest.raises(ValueError, match=r"set_num_threads: n must be in \[1, \d+\]"):
        dtkd.set_num_threads(n)
    assert dtkd.get_num_threads() == before


def test_the_c_binding_refuses_a_million_threads_too():
    with pytest.raises(ValueError, match="set_num_threads"):
        dtkd._C.set_num_threads(10 ** 6)


def test_a_parallel_kernel_runs_at_max_threads():
    # in a child: the probe's segfault would otherwise take the test run down with it
    code = textwrap.dedent("""
        import numpy as np, dtkd
        from dtkd import losses
        dtkd.set_num_threads(dtkd.MAX_THREADS)
        s = np.random.default_rng(0).standard_normal((1000, 100)).astype(np.float32)
        print(float(losses.kd(s, 2 * s).loss))
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert np.isfinite(float(out.stdout))


# ---- losses: masked logits, temperatures, float32's range ----------------------------------

import losses_reference as ref  # noqa: E402
from kernel_testing import available_isas, simd_path  # noqa: E402


@pytest.fixture(params=available_isas())
def isa(request):
    """Each SIMD path the CPU runs (the exp and moment primitives exist once per ISA)."""
    with simd_path(request.param):
        yield request.param


S4 = np.array([[2, 1, .5, -1], [0.5, 3, -2, 1]], np.float32)
Y4 = np.array([0, 1])


def _masked_teacher(value):
    return np.array([[3, 1, 0, value], [value, 2, 1, -1]], np.float32)


def _f64(*arrays):
    return tuple(a.astype(np.float64) for a in arrays)


@pytest.mark.parametrize("mask", [-1e9, -1e20, -1e38, -3.4e38])
def test_masked_teacher_logits_give_the_float64_loss_and_gradient(isa, mask):
    """The probe: t = [3, 1, 0, -1e20] gave a DTKD grad of 10.38 (reference 0.38), and -1e38 a
    KD loss of -0.160 (reference 3.006): exp clamped at exp(-87) instead of 0."""
    t = _masked_teacher(mask)
    s64, t64 = _f64(S4, t)
    kd = losses.kd(S4, t, reduction="sum")
    np.testing.assert_allclose(kd.loss, ref.kd(s64, t64, 4.0).sum(), rtol=1e-5)
    np.testing.assert_allclose(kd.grad, 4.0 * (ref.softmax(s64 / 4) - ref.softmax(t64 / 4)),
                               atol=1e-6)
    dt = losses.dtkd(S4, t, reduction="sum")
    np.testing.assert_allclose(dt.loss, ref.dtkd(s64, t64, 4.0).sum(), rtol=1e-5)
    fd = ref.finite_difference_grad(lambda x: ref.dtkd(x, t64, 4.0), s64)
    np.testing.assert_allclose(dt.grad, fd, rtol=1e-4, atol=1e-5)
    dkd = losses.dkd(S4, t, Y4, reduction="sum")
    np.testing.assert_allclose(dkd.loss, ref.dkd(s64, t64, Y4, 1.0, 8.0, 4.0)[0].sum(), rtol=1e-5)
    fd = ref.finite_difference_grad(lambda x: ref.dkd(x, t64, Y4, 1.0, 8.0, 4.0)[0], s64)
    np.testing.assert_allclose(dkd.grad, fd, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("mask", [-1e9, -1e38])
def test_masked_student_logits_are_exact_in_the_softmax_family_and_cross_entropy(isa, mask):
    x = np.array([[1, 2, mask, 0.5]], np.float32)
    x64, = _f64(x)
    np.testing.assert_allclose(losses.softmax(x), ref.softmax(x64), atol=1e-7)
    assert losses.softmax(x)[0, 2] == 0.0
    np.testing.assert_allclose(losses.logsumexp(x), ref.logsumexp(x64), rtol=1e-6)
    ce = losses.cross_entropy(x, np.array([1]), reduction="sum")
    np.testing.assert_allclose(ce.loss, ref.cross_entropy(x64, np.array([1])).sum(), rtol=1e-6)


def test_an_actual_minus_inf_is_rejected_naming_the_argument():
    """Decided and documented (losses.h): -inf is not a mask value; a large finite negative
    such as -1e9 or numpy.finfo(numpy.float32).min is handled exactly."""
    t = _masked_teacher(-np.inf)
    with pytest.raises(ValueError, match="teacher: contains NaN or Inf"):
        losses.kd(S4, t)


@pytest.mark.parametrize("T", [32.0, 1e3, 1e4, 1e6])
def test_large_temperatures_keep_the_loss(isa, T):
    """The probe: dtkd at T=1e4 was 16% off, kd at T=1e6 was -32225 (a KL is never negative)."""
    rng = np.random.default_rng(1)
    s, t = ref.random_logits(rng, 6, 10), ref.random_logits(rng, 6, 10)
    # float64 references lose ~1e-16 T of the KL's relative digits (1e-4 at T = 1e6): use x87
    # extended precision where the platform has it (longdouble is float64 elsewhere)
    s64, t64 = (a.astype(np.longdouble) for a in (s, t))
    kd = losses.kd(s, t, temperature=T, reduction="none")
    assert np.all(kd.loss >= 0)
    np.testing.assert_allclose(kd.loss, ref.kd(s64, t64, T), rtol=1e-4)
    np.testing.assert_allclose(kd.grad, T * (ref.softmax(s64 / T) - ref.softmax(t64 / T)),
                               rtol=1e-4, atol=1e-7 * np.abs(kd.grad).max())
    dt = losses.dtkd(s, t, temperature=T, reduction="none")
    np.testing.assert_allclose(dt.loss, ref.dtkd(s64, t64, T), rtol=1e-4)
    dk = losses.dkd(s, t, np.arange(6) % 10, temperature=T, reduction="none")
    np.testing.assert_allclose(dk.loss, ref.dkd(s64, t64, np.arange(6) % 10, 1.0, 8.0, T)[0],
                               rtol=1e-4)


def test_kd_tends_to_half_the_variance_of_the_logit_gap_as_t_grows():
    """T^2 KL(softmax(t/T) || softmax(s/T)) -> Var_uniform(t - s) / 2 as T -> infinity: an
    answer independent of float64 references, which lose digits at T = 1e6 themselves."""
    rng = np.random.default_rng(2)
    s, t = ref.random_logits(rng, 3, 7), ref.random_logits(rng, 3, 7)
    gap = (t - s).astype(np.float64)
    limit = 0.5 * ((gap - gap.mean(1, keepdims=True)) ** 2).mean(1)
    np.testing.assert_allclose(losses.kd(s, t, temperature=1e7, reduction="none").loss, limit,
                               rtol=1e-5)


@pytest.mark.parametrize("tiny", [1e-12, 1e-30, 1e-38])
def test_a_tiny_positive_max_logit_gives_a_finite_loss_and_gradient(isa, tiny):
    """The probe: a student max logit of 1e-38 gave loss inf and a NaN gradient. T_s -> 0 is a
    limit the loss and gradient approach continuously: compare with m_s = 1e-6, whose float64
    finite differences work."""
    t = np.array([[3, 1, 0, -1]], np.float32)
    r = losses.dtkd(np.array([[tiny, -1, -2, -3]], np.float32), t)
    near = losses.dtkd(np.array([[1e-6, -1, -2, -3]], np.float32), t)
    assert np.isfinite(r.loss) and np.all(np.isfinite(r.grad))
    np.testing.assert_allclose(r.loss, near.loss, rtol=1e-5)
    np.testing.assert_allclose(r.grad, near.grad, rtol=1e-5, atol=1e-5)
    s64 = np.array([[1e-6, -1, -2, -3]])
    fd = ref.finite_difference_grad(lambda x: ref.dtkd(x, t.astype(np.float64), 4.0), s64, h=1e-9)
    np.testing.assert_allclose(near.grad, fd, rtol=1e-3, atol=1e-3)


@pytest.mark.parametrize("name", ["alpha", "beta", "gamma"])
@pytest.mark.parametrize("value", [1e39, 1e300, -1e300])
def test_weights_beyond_float32_are_refused_naming_them(name, value):
    """The probe: alpha=1e300 gave a finite loss and an all-NaN gradient."""
    with pytest.raises(ValueError, match=f"{name}: .* beyond float32's range"):
        losses.dtkd_objective(S4, _masked_teacher(-1.0), Y4, **{name: value})
    if name != "gamma":
        with pytest.raises(ValueError, match=f"{name}: .* beyond float32's range"):
            losses.dkd(S4, _masked_teacher(-1.0), Y4, **{name: value})


def test_a_gradient_that_overflows_float32_is_a_range_error_not_nan():
    t = _masked_teacher(-1.0)
    with pytest.raises(ValueError, match="float32's range"):
        losses.dkd(S4 * 1e37, t * 1e37, Y4, alpha=3e38, beta=3e38, temperature=1.0)


@pytest.mark.parametrize("T", [1e-50, 1e39, 1e-39])
def test_temperatures_outside_float32_name_its_range(T):
    with pytest.raises(ValueError, match=r"temperature: .* outside float32's range"):
        losses.dtkd(S4, _masked_teacher(-1.0), temperature=T)


@pytest.mark.parametrize("rule", ["official", "exact"])
def test_a_dynamic_temperature_beyond_float32_falls_back_to_the_reference(isa, rule):
    """Found by atheris in CI (losses harness): at temperature=3.4e38 a teacher whose max logit
    dwarfs the student's derives T_t = 2 m_t / (m_s + m_t) T ~ 6.8e38, finite in double but inf
    once stored as float32. Such a sample falls back to T_s = T_t = T, like any other sample
    whose derived temperatures are unusable, and is counted."""
    s = np.array([[124, -48, 0, 26], [71, -45, 39, 137]], np.float32)
    t = np.array([[1e6, -6e5, -1e6, -5e5], [8e5, -5e5, -2e5, -4e5]], np.float32)
    T = 3.4e38
    for detach in (False, True):
        r = losses.dtkd(s, t, temperature=T, rule=rule, detach_temperature=detach)
        for name in ("loss", "grad", "t_student", "t_teacher"):
            assert np.all(np.isfinite(getattr(r, name))), name
        np.testing.assert_array_equal(r.t_teacher, np.float32(T))
        np.testing.assert_array_equal(r.t_student, np.float32(T))
        assert r.n_fallback == 2
    # at T = 1e38 the official rule's temperatures are storable: no fallback
    if rule == "official":
        r = losses.dtkd(s, t, temperature=1e38, rule=rule)
        assert r.n_fallback == 0 and np.all(r.t_teacher > 1e38)
        assert np.all(np.isfinite(r.t_teacher))


@pytest.mark.parametrize("fn", [losses.logsumexp, losses.sharpness, losses.log_softmax])
def test_logits_over_t_beyond_float32_raise_naming_the_range(isa, fn):
    """Found by atheris (losses harness): sharpness/logsumexp returned inf for finite logits
    (3.4e38 at T=0.5)."""
    x = np.array([[3.4e38, 0.0, -3.4e38]], np.float32)
    with pytest.raises(ValueError, match="float32's range"):
        fn(x, temperature=0.5)
    assert np.all(np.isfinite(fn(x[:, :2], temperature=1.0)))  # in range: a result


# ---- big-endian arrays: '>f4' has type NPY_FLOAT32 too; its bytes must not be read as native --

def _swapped(a):
    return a.astype(a.dtype.newbyteorder(">" if np.little_endian else "<"))


def _linear_output(w):
    layer = dtkd.nn.Linear(3, 4)
    layer.load_state_dict({"weight": w, "bias": np.zeros(4, np.float32)})
    return layer(np.ones((2, 3), np.float32))


@pytest.mark.parametrize("call, arg", [
    (_linear_output, None),  # Python front ends convert to native order: same result
    (lambda w: losses.kd(w, np.ones((4, 3), np.float32)).loss, None),
    (lambda w: dtkd._C.sgemm(w, np.ones((3, 2), np.float32)), "a"),  # the C boundary refuses
])
def test_byte_swapped_arrays_are_refused_or_read_in_their_byte_order(call, arg):
    native = np.arange(12, dtype=np.float32).reshape(4, 3) / 7
    if arg is None:
        np.testing.assert_array_equal(call(_swapped(native)), call(native))
    else:
        with pytest.raises(TypeError, match=f"{arg}: expected native byte order"):
            call(_swapped(native))


# ---- dtkd.io.load: every bad file is a CheckpointError naming it ------------------------------

def _npz_with_header(path, header, members=()):
    """A zip like dtkd.io.save's: ``header`` (bytes) as the __dtkd__ member, plus raw members."""
    import io
    import zipfile
    with zipfile.ZipFile(path, "w") as z:
        buf = io.BytesIO()
        np.save(buf, np.frombuffer(header, np.uint8))
        z.writestr("__dtkd__.npy", buf.getvalue())
        for name, raw in members:
            z.writestr(name + ".npy", raw)
    return path


def _load_error(path):
    with pytest.raises(dtkd.io.CheckpointError) as e:
        dtkd.io.load(path)
    assert path.name in str(e.value)
    return str(e.value)


def test_loading_a_plain_npy_file_says_what_it_is(tmp_path):
    """The probe: TypeError ("'numpy.ndarray' object does not support the context manager")."""
    np.save(tmp_path / "plain.npy", np.arange(3))
    assert "plain .npy" in _load_error(tmp_path / "plain.npy")
    (tmp_path / "text.npz").write_text("hello")
    assert "not a zip archive" in _load_error(tmp_path / "text.npz")


@pytest.mark.parametrize("version", [1, 2])
def test_a_header_without_tree_is_malformed_not_a_keyerror(tmp_path, version):
    import json
    head = json.dumps({"format": "dtkd-checkpoint", "version": version, "checksum": "x"})
    assert "no 'tree'" in _load_error(_npz_with_header(tmp_path / "c.npz", head.encode()))


@pytest.mark.parametrize("depth", [500, 100_000])
def test_a_deeply_nested_header_is_refused_without_recursion_errors(tmp_path, depth):
    head = '{"format": "dtkd-checkpoint", "version": 1, "tree": %s}' % ("[" * depth + "]" * depth)
    _load_error(_npz_with_header(tmp_path / "c.npz", head.encode()))
    from dtkd.io.checkpoint import MAX_DEPTH
    tree = []
    for _ in range(MAX_DEPTH):
        tree = [tree]
    with pytest.raises(ValueError, match="deeper than"):
        dtkd.io.save(tmp_path / "deep.npz", tree)  # save refuses what load would


def test_a_deep_tree_within_the_bound_round_trips(tmp_path):
    tree = {"w": np.arange(2)}
    for _ in range(90):  # 180 levels of dicts and lists
        tree = {"x": [tree]}
    dtkd.io.save(tmp_path / "ok.npz", tree)
    back = dtkd.io.load(tmp_path / "ok.npz")
    for _ in range(90):  # 180 levels of dicts and lists
        back = back["x"][0]
    np.testing.assert_array_equal(back["w"], np.arange(2))


def test_a_member_claiming_a_tebibyte_is_refused_before_allocating(tmp_path):
    """The probe: MemoryError ("Unable to allocate 1.00 TiB")."""
    import json
    import struct
    d = b"{'descr': '<f4', 'fortran_order': False, 'shape': (274877906944,), }".ljust(117) + b"\n"
    npy = b"\x93NUMPY\x01\x00" + struct.pack("<H", len(d)) + d + bytes(16)
    head = json.dumps({"format": "dtkd-checkpoint", "version": 1,
                       "tree": {"a": {"__array__": "a0"}}}).encode()
    msg = _load_error(_npz_with_header(tmp_path / "big.npz", head, [("a0", npy)]))
    assert "claims 1099511627776 bytes" in msg
    head = json.dumps({"format": "dtkd-checkpoint", "version": 1,
                       "tree": {"a": {"__array__": ["a0"]}}}).encode()  # not a member name
    assert "missing" in _load_error(_npz_with_header(tmp_path / "ref.npz", head))


# ---- config: every bad file or value is a ConfigError naming it, at load -------------------

def _config_error(tmp_path, raw, match):
    from dtkd.config import ConfigError, load_config
    path = tmp_path / "bad.yaml"
    path.write_bytes(raw)
    with pytest.raises(ConfigError, match=match) as e:
        load_config(str(path))
    assert str(path) in str(e.value)
    return str(e.value)


@pytest.mark.parametrize("depth", [900, 100_000])
def test_deeply_nested_yaml_is_a_config_error_not_a_recursion_error(tmp_path, depth):
    _config_error(tmp_path, b"SOLVER:\n  LR: " + b"[" * depth + b"]" * depth + b"\n",
                  "nests lists / mappings too deeply")


def test_non_utf8_bytes_are_a_config_error_saying_where(tmp_path):
    _config_error(tmp_path, b"SOLVER:\n  LR: 0.1\n  # caf\xe9\n",
                  r"not a UTF-8 text file \(byte 0xe9 at offset 25, line 3\)")


def test_a_yaml_alias_bomb_gives_a_short_error_quickly(tmp_path):
    """The probe: 457 bytes took 1.85 s and 153 MB, growing ~10x per line, because the error
    message quoted the whole value. Nine lines here: 10**9 leaves if written out."""
    import time
    lines = "".join(f"    - &a{i} [" + ",".join(["lol"] * 10 if i == 0 else [f"*a{i - 1}"] * 10)
                    + "]\n" for i in range(9))
    start = time.perf_counter()
    msg = _config_error(tmp_path, b"EXPERIMENT:\n  NAME:\n" + lines.encode(),
                        "EXPERIMENT.NAME expects a string")
    assert len(msg) < 600 and time.perf_counter() - start < 1.0


@pytest.mark.parametrize("key, value, match", [
    ("SOLVER.LR", "nan", "SOLVER.LR expects a finite number"),
    ("SOLVER.LR", "-.inf", "SOLVER.LR expects a finite number"),
    ("DTKD.T", "1e300", r"DTKD.T expects a number within float32's range"),
    ("DKD.BETA", "1e39", r"DKD.BETA expects a number within float32's range"),
    ("SOLVER.EPOCHS", "1e300", "SOLVER.EPOCHS expects an integer within int64's range"),
    ("SOLVER.LR", "1" + "0" * 400, r"SOLVER.LR expects a number within float32's range"),
])
def test_non_finite_or_out_of_range_values_fail_at_load_naming_the_key(tmp_path, key, value, match):
    from dtkd.config import ConfigError, load_config
    with pytest.raises(ConfigError, match=f"command line: {match}"):
        load_config(None, [key, value])
    group, leaf = key.split(".")
    _config_error(tmp_path, f"{group}:\n  {leaf}: {value}\n".encode(), match)
    assert load_config(None, [key, "3.0e38" if "EPOCHS" not in key else "7"])  # in range: fine


def test_a_key_under_a_value_does_not_suggest_the_value_as_its_own_fix():
    from dtkd.config import ConfigError, load_config
    with pytest.raises(ConfigError) as e:
        load_config(None, ["SOLVER.LR.X", "1"])
    msg = str(e.value)
    assert "SOLVER.LR is a value (default 0.05), not a group of keys" in msg
    assert "did you mean" not in msg


# ---- IDX: the header's size in Python ints, checked against the file before reading ---------

def _idx_header(*dims):
    import struct
    return struct.pack(f">4s{len(dims)}I", bytes((0, 0, 8, len(dims))), *dims)


def test_idx_dims_that_overflow_int64_are_an_implausible_header_naming_the_file(tmp_path):
    """The probe: 0xFFFFFFFF x3 reported "= 12884901887 bytes" (wrapped arithmetic)."""
    from dtkd.data import read_idx
    path = tmp_path / "x-idx3-ubyte"
    path.write_bytes(_idx_header(0xFFFFFFFF, 0xFFFFFFFF, 0xFFFFFFFF) + bytes(100))
    with pytest.raises(ValueError, match="corrupt or implausible header") as e:
        read_idx(path, 3)
    assert str(path) in str(e.value) and str(0xFFFFFFFF ** 3) in str(e.value)


def test_a_gzip_idx_bomb_is_refused_before_decompressing(tmp_path):
    """The probe: a 204 KB .gz peaked at 434 MB before rejection."""
    import gzip
    import tracemalloc
    from dtkd.data import read_idx
    path = tmp_path / "x-idx3-ubyte.gz"
    path.write_bytes(gzip.compress(_idx_header(1000, 1000, 434) + bytes(8 << 20), 9))
    tracemalloc.start()
    try:
        with pytest.raises(ValueError, match="more than a gzip file of .* can decompress to"):
            read_idx(path, 3)
        # within deflate's ratio but still a lie: 1 MB declared, 24 MB of data: reading stops
        # one chunk (1 MiB) past the declared size
        path.write_bytes(gzip.compress(_idx_header(1000, 1000, 1) + bytes(24 << 20), 9))
        tracemalloc.reset_peak()
        with pytest.raises(ValueError, match="trailing bytes") as e:
            read_idx(path, 3)
        assert str(path) in str(e.value)
        assert tracemalloc.get_traced_memory()[1] < 6 << 20
    finally:
        tracemalloc.stop()
    path.write_bytes(gzip.compress(_idx_header(2, 3, 4) + bytes(range(24))))
    np.testing.assert_array_equal(read_idx(path, 3), np.arange(24, dtype=np.uint8).reshape(2, 3, 4))


# ---- Dataset normalization constants: usable in float32 ------------------------------------

@pytest.mark.parametrize("std, match", [
    (1e-40, r"std: channel 0: 1e-40 is outside float32's usable range: its reciprocal"),
    (1e-45, "reciprocal"),
    (1e39, "reciprocal"),
    (1e-39, "reciprocal"),
    (0.0, "std > 0"),
])
def test_dataset_refuses_a_std_whose_normalization_is_not_finite_in_float32(std, match):
    """The probe: Dataset(std=1e-40) made every batch inf."""
    images = np.arange(32, dtype=np.uint8).reshape(2, 4, 4, 1)
    with pytest.raises(ValueError, match=match):
        dtkd.data.Dataset(images, [0, 1], ["a", "b"], mean=(0.5,), std=(std,))
    with pytest.raises(ValueError, match="std: channel 0: 1e-30 with mean 1e"):
        dtkd.data.Dataset(images, [0, 1], ["a", "b"], mean=(1e30,), std=(1e-30,))
    ds = dtkd.data.Dataset(images, [0, 1], ["a", "b"], mean=(0.5,), std=(1e-30,))  # extreme, finite
    x, _ = next(iter(dtkd.data.DataLoader(ds, batch_size=2, shuffle=False)))
    assert np.all(np.isfinite(x))


# ---- CIFAR pickles of protocol 5 ------------------------------------------------------------

def test_a_cifar_file_pickled_with_protocol_5_reads_like_protocol_2():
    """The probe: protocol 5 was refused naming numpy._core.numeric._frombuffer (the
    constructor NumPy uses for protocol-5 arrays, now allow-listed as a bytes view)."""
    import pickle
    from dtkd.data.cifar import _parse_split_file
    rng = np.random.default_rng(0)
    split = {b"data": rng.integers(0, 256, (3, 3072), dtype=np.uint8),
             b"fine_labels": [1, 5, 99], b"coarse_labels": [0, 1, 19]}
    want = _parse_split_file(pickle.dumps(split, protocol=2), "p2", "fine_labels", 100)
    for data in (split[b"data"], np.asfortranarray(split[b"data"])):  # C and F order
        got = _parse_split_file(pickle.dumps({**split, b"data": data}, protocol=5), "p5",
                                "fine_labels", 100)
        for a, b in zip(got, want):
            np.testing.assert_array_equal(a, b)
    # out-of-band buffers (no buffers are given) and foreign globals stay refused, named
    raw = pickle.dumps(split, protocol=5, buffer_callback=lambda b: False)
    with pytest.raises(ValueError, match="oob: not a readable CIFAR pickle .*out-of-band"):
        _parse_split_file(raw, "oob", "fine_labels", 100)
    evil = pickle.dumps({b"data": np.float64}, protocol=5)  # a global outside the allow-list
    with pytest.raises(ValueError, match="evil: .*refusing to load the global numpy"):
        _parse_split_file(evil, "evil", "fine_labels", 100)


# ---- layers on finite inputs near float32's limit: a result, or an error about the output ----

@pytest.mark.parametrize("value", [1e38, -3.4e38, 3.4e38])
def test_average_pooling_of_finite_values_near_float32_max_is_their_average(value):
    """The probe: AvgPool2d(2) of 1e38 raised "x: contains NaN or Inf" (the float window sum
    overflowed); global average pooling did the same past 16 lanes x 2 values."""
    x = np.full((1, 2, 4, 4), value, np.float32)
    x[0, 1] *= -1
    y = dtkd.nn.AvgPool2d(2)(x)
    np.testing.assert_array_equal(y[0, 0], np.full((2, 2), value, np.float32))
    np.testing.assert_array_equal(y[0, 1], np.full((2, 2), -value, np.float32))
    big = np.full((2, 3, 16, 16), value, np.float32)
    np.testing.assert_allclose(dtkd._C.global_avgpool_forward(big), np.full((2, 3), value),
                               rtol=1e-6)
    x[0, 0, 1, 1] = np.inf  # a real Inf is still named
    with pytest.raises(ValueError, match="x: contains NaN or Inf"):
        dtkd.nn.AvgPool2d(2)(x)


def _bn_reference(x, eps=1e-5):
    x64 = x.astype(np.float64)
    m, v = x64.mean((0, 2, 3), keepdims=True), x64.var((0, 2, 3), keepdims=True)
    return (x64 - m) / np.sqrt(v + eps)


@pytest.mark.parametrize("hw", [3, 32])  # 32x32: 64 values of 1e37 per float lane overflow
def test_batchnorm_training_on_a_constant_1e37_channel_gives_beta(hw):
    """The probe: all-NaN output (later an overflow error): x * scale + (beta - mean * scale)
    cancels two terms near 3e39; the kernel now centers first, with an exact shifted mean."""
    bn = dtkd.nn.BatchNorm2d(2)
    bn.bias.data[...] = [0.5, -2.0]
    x = np.full((4, 2, hw, hw), 1e37, np.float32)
    x[:, 1] = -3e38
    y = bn(x)
    np.testing.assert_array_equal(y[:, 0], 0.5)
    np.testing.assert_array_equal(y[:, 1], -2.0)
    np.testing.assert_allclose(bn.running_mean, [1e36, -3e37], rtol=1e-6)
    dx = bn.backward(np.ones_like(y))
    assert np.all(np.isfinite(dx))


@pytest.mark.parametrize("offset", [1e7, -3e5, 1e4])
def test_batchnorm_keeps_the_noise_on_a_large_offset(offset):
    """The probe: 1e7 + randn lost accuracy (0.08 off: x * scale and the shift cancel, and the
    float32 mean of 1e7 + noise is off by up to 0.5)."""
    x = (offset + np.random.default_rng(3).standard_normal((8, 3, 5, 5))).astype(np.float32)
    bn = dtkd.nn.BatchNorm2d(3)
    np.testing.assert_allclose(bn(x), _bn_reference(x), atol=2e-5)
    # the backward too (its x - mean used the float32 mean: dgamma was 1.5 off at 1e7)
    g = np.random.default_rng(4).standard_normal(x.shape)
    dx = bn.backward(g.astype(np.float32))
    x64 = x.astype(np.float64)
    xhat = _bn_reference(x)
    inv = 1 / np.sqrt(x64.var((0, 2, 3), keepdims=True) + 1e-5)
    ref = inv * (g - g.mean((0, 2, 3), keepdims=True)
                 - xhat * (g * xhat).mean((0, 2, 3), keepdims=True))
    np.testing.assert_allclose(dx, ref, atol=1e-5)
    np.testing.assert_allclose(bn.weight.grad, (g * xhat).sum((0, 2, 3)), atol=1e-4)
    bn.eval()  # eval: centered on the float32 running mean, not x * scale + shift
    bn.running_mean[...] = x.astype(np.float64).mean((0, 2, 3))
    bn.running_var[...] = 1.0
    want = (x.astype(np.float64) - bn.running_mean.reshape(1, 3, 1, 1)) / np.sqrt(1 + 1e-5)
    np.testing.assert_allclose(bn(x), want, atol=2e-5)


def test_batchnorm_statistics_beyond_float32_are_a_range_error_leaving_running_stats():
    bn = dtkd.nn.BatchNorm2d(1)
    x = np.full((2, 1, 4, 4), 3.4e38, np.float32)
    x[0] *= -1  # variance 1.2e77: no float32 running_var can hold it
    with pytest.raises(ValueError, match="batch statistics leave float32's range"):
        bn(x)
    np.testing.assert_array_equal(bn.running_var, [1.0])
    np.testing.assert_array_equal(bn.running_mean, [0.0])


@pytest.mark.parametrize("m", [2, 4])
@pytest.mark.parametrize("scale", [1e37, 3e37])
def test_winograd_beyond_its_float32_range_runs_the_direct_convolution(m, scale):
    """The probe: Winograd overflowed to Inf on inputs near 1e37 where the direct path stays
    finite. Beyond the transform's bound (max|x| max|w| growth C), the direct path runs."""
    from dtkd import _C
    rng = np.random.default_rng(4)
    x = (rng.standard_normal((2, 4, 6, 6)) * scale).astype(np.float32)
    w = (rng.standard_normal((3, 4, 3, 3)) * 0.3).astype(np.float32)
    b = np.array([1e36, -1.0, 0.0], np.float32)
    direct = _C.conv2d_forward(x, w, b, 1, 1, 1, 1, 1)
    assert np.all(np.isfinite(direct))
    np.testing.assert_array_equal(_C.winograd_conv3x3_forward(x, w, b, m), direct)
    residual = (rng.standard_normal(direct.shape) * scale).astype(np.float32)
    want = np.maximum(direct + residual, 0)
    out = residual.copy()  # out may be the residual itself
    y = _C.winograd_conv3x3_forward(x, w, b, m, residual=out, relu=True, out=out)
    assert y is out or np.shares_memory(y, out)
    np.testing.assert_array_equal(out, want)
    dy = (rng.standard_normal(direct.shape) * scale).astype(np.float32)
    dx = _C.winograd_conv3x3_backward_input(dy, w, m)
    ref = _C.conv2d_backward(dy, x, w, 1, 1, 1, 1, 1, None, None, True)
    np.testing.assert_allclose(dx, ref, rtol=1e-5, atol=1e-6 * np.abs(ref).max())


@pytest.mark.parametrize("m", [2, 4])
def test_winograd_input_near_float32_max_with_tiny_weights_runs_the_direct_convolution(m):
    """Found by atheris (nn harness): one x of 3.4e38 with weights ~1e-30 passed the product
    bound (max|x| max|w| growth C ~ 1e14) but the input transform alone (up to 100 max|x|)
    overflowed to Inf, and Inf * tiny weights - Inf gave NaN outputs. Each stage is bounded now."""
    from dtkd import _C
    rng = np.random.default_rng(5)
    x = rng.standard_normal((2, 8, 2, 4)).astype(np.float32)
    x[1, 7, 0, 0] = 3.4e38
    w = (rng.standard_normal((3, 8, 3, 3)) * 1e-30).astype(np.float32)
    direct = _C.conv2d_forward(x, w, None, 1, 1, 1, 1, 1)
    assert np.all(np.isfinite(direct))
    np.testing.assert_array_equal(_C.winograd_conv3x3_forward(x, w, None, m), direct)
    dy = x[:, 5:].copy()  # holds the 3.4e38; the input gradient sees the same stage bound (C and O swapped)
    dx = _C.winograd_conv3x3_backward_input(dy, w, m)
    assert np.all(np.isfinite(dx))
    dw = np.zeros(w.shape, np.float32)  # and the weight gradient: finite, the exact sum's
    _C.winograd_conv3x3_backward_weight(np.ones_like(direct) * 1e-30, x, dw, m)
    exact = np.zeros(w.shape, np.float32)
    _C.conv3x3_backward_weight(np.ones_like(direct) * 1e-30, x, exact)
    assert np.all(np.isfinite(dw))
    np.testing.assert_array_equal(dw, exact)


@pytest.mark.parametrize("m", [2, 4, "exact"])
def test_a_3x3_weight_gradient_beyond_float32_is_a_range_error_leaving_dw(m):
    """Found by the seeded nn harness: dy ~1e20 with x ~1e37 has a true weight gradient beyond
    float32; the call raises naming the range and leaves the accumulated dw as it was (the
    exact kernel returned Inf before)."""
    from dtkd import _C
    x = np.full((2, 3, 4, 4), 1e37, np.float32)
    dy = np.full((2, 2, 4, 4), -1e20, np.float32)
    dw = np.arange(2 * 3 * 9, dtype=np.float32).reshape(2, 3, 3, 3)
    before = dw.copy()
    name = "conv3x3_backward_weight" if m == "exact" else "winograd_conv3x3_backward_weight"
    with pytest.raises(ValueError, match=name + r": the weight gradient exceeds float32's range "
                                         r".* \(dw is unchanged\)"):
        if m == "exact":
            _C.conv3x3_backward_weight(dy, x, dw)
        else:
            _C.winograd_conv3x3_backward_weight(dy, x, dw, m)
    np.testing.assert_array_equal(dw, before)


def test_winograd_results_beyond_float32_are_a_range_error_naming_it():
    from dtkd import _C
    x = np.full((1, 4, 5, 5), 3e38, np.float32)
    w = np.full((2, 4, 3, 3), 10.0, np.float32)
    with pytest.raises(ValueError, match=r"output exceeds float32's range \(\|y\| <= 3.4e38\)"):
        _C.winograd_conv3x3_forward(x, w)
    with pytest.raises(ValueError, match=r"output exceeds float32's range"):
        _C.winograd_conv3x3_backward_input(np.full((1, 2, 5, 5), 3e38, np.float32), w)
    # pre-transformed weights (the fused eval path) cannot fall back: an error naming x
    u = _C.winograd_transform_weights(np.full((2, 4, 3, 3), 1e-3, np.float32), 4)
    with pytest.raises(ValueError, match=r"x: max \|x\| = 3e\+38 is beyond float32's range for "
                                         r"the Winograd transform"):
        _C.winograd_conv3x3_forward_transformed(x, u)


def test_a_conv2d_layer_trains_on_1e37_inputs_with_finite_results():
    conv = dtkd.nn.Conv2d(16, 8, 3, padding=1, rng=np.random.default_rng(0))
    assert dtkd.nn.conv.uses_winograd(conv)
    x = (np.random.default_rng(1).standard_normal((2, 16, 6, 6)) * 1e37).astype(np.float32)
    y = conv(x)
    dx = conv.backward(np.ones_like(y))
    assert np.all(np.isfinite(y)) and np.all(np.isfinite(dx))


# ---- load_state_dict: no silent cast (issue 13 probe) -----------------------------------------

@pytest.mark.parametrize("key, value, match", [
    ("weight", np.array([1e39, 1.0]), "beyond float32's range"),
    ("running_var", np.array([-1.0, 1.0], np.float32), "must be >= 0"),
    ("num_batches_tracked", np.array(1.5e30), "do not fit int64"),
    ("num_batches_tracked", np.array(3.5), "whole numbers"),
    ("running_mean", np.array([np.nan, 0.0], np.float32), "NaN or Inf"),
])
def test_load_state_dict_refuses_values_the_cast_would_change(key, value, match):
    bn = dtkd.nn.BatchNorm2d(2)
    before = bn.state_dict()
    state = dict(before)
    state[key] = value
    with pytest.raises(ValueError, match=match) as info:
        bn.load_state_dict(state)
    assert repr(key) in str(info.value)
    after = bn.state_dict()
    assert all(np.array_equal(before[k], after[k]) for k in before), "a failed load changed state"


def test_load_state_dict_accepts_exact_casts():
    bn = dtkd.nn.BatchNorm2d(2)
    state = bn.state_dict()
    state["num_batches_tracked"] = np.array(7.0)  # a float that is a whole number
    state["weight"] = np.array([0.5, 2.0])        # float64 inside float32's range
    bn.load_state_dict(state)
    assert int(bn.num_batches_tracked) == 7 and bn.weight.data.tolist() == [0.5, 2.0]


def test_a_checkpoint_member_with_an_unterminated_npy_header_is_a_checkpoint_error(tmp_path):
    """Found by atheris (checkpoint harness): NumPy tokenizes a member's .npy header dict, and
    an unterminated one raised tokenize.TokenError out of dtkd.io.load."""
    import struct
    import zipfile
    good = tmp_path / "good.npz"
    dtkd.io.save(good, {"w": np.ones(3, np.float32)})
    bad = tmp_path / "bad.npz"
    header = b"{'descr': '<f4', 'fortran_order': False, 'shape': (3,\n"
    member = b"\x93NUMPY\x01\x00" + struct.pack("<H", len(header)) + header
    with zipfile.ZipFile(good) as src, zipfile.ZipFile(bad, "w") as dst:
        for info in src.infolist():
            dst.writestr(info.filename, member if info.filename.startswith("__")
                         else src.read(info.filename))
    with pytest.raises(dtkd.io.CheckpointError, match=r"bad\.npz: corrupt or truncated"):
        dtkd.io.load(bad)
