"""The recorded step (minivae.fast.program): replayed on one thread it is the engine's step bit for
bit (the same compiled passes and the same BLAS products, called from C++ instead of Python); on
two threads it stays within float32 rounding of that and is itself bit-reproducible; it follows
the batch, the noise, the KL weight and the learning rate from call to call; it records only what
it can replay, and TrainStep runs the engine for anything else."""
import multiprocessing
import threading

import numpy as np
import pytest

import minivae
from minivae.fast import program
from minivae.fast.program import Recorder, RecordingError, Symbol, unsupported_reason
from minivae.training.step import TrainStep

D, K = 40, 5
ARCHITECTURES = [
    # hidden_dims, decoder_hidden_dims, activation
    ([12], None, "relu"),
    ([12, 9], None, "tanh"),
    ([], None, "relu"),                 # linear encoder and decoder
    ([10], [7, 5], "leaky_relu"),
    ([33, 17], [20], "tanh"),           # widths that are not multiples of the 16-column blocks
]
OPTIMIZERS = {
    "adam": lambda params: minivae.Adam(params, lr=1e-2),
    "sgd": lambda params: minivae.SGD(params, lr=0.05),
    "sgd-nesterov": lambda params: minivae.SGD(params, lr=0.05, momentum=0.9, nesterov=True),
}


def make(arch, dtype="float32", seed=0, likelihood="bernoulli", backend="numpy"):
    hidden, decoder_hidden, activation = arch
    return minivae.VAE(D, hidden, K, activation=activation, likelihood=likelihood, dtype=dtype, seed=seed,
                       decoder_hidden_dims=decoder_hidden, backend=backend)


def batch(n, seed):
    return np.random.default_rng(seed).uniform(0.05, 0.95, size=(n, D)).astype(np.float32)


def _available():
    model = make(ARCHITECTURES[0])
    return unsupported_reason(model, minivae.Adam(model.params)) is None


AVAILABLE = _available()
needs_program = pytest.mark.skipif(
    not AVAILABLE, reason="no recorded step here (no C++ compiler, or no CBLAS sgemm in NumPy's BLAS)")


def run(arch, optimizer, threads, steps=4, n=7, L=1, use_program=True, seed=0):
    """(per step: loss terms as float32 values; the last gradients; the parameters) of ``steps``
    steps on changing batches, KL weights and learning rates."""
    model = make(arch, seed=seed)
    opt = OPTIMIZERS[optimizer](model.params)
    step = TrainStep(model, opt, n_samples=L, threads=threads, program=use_program)
    assert step.runner == ("program" if use_program else "engine"), step.program_reason
    terms = []
    for i in range(steps):
        opt.lr *= 0.9                     # a schedule: the coefficients are bound at every run
        t = step(batch(n, seed=i), beta=(0.3, 1.0)[i % 2])
        terms.append((t.loss, t.reconstruction, t.kl))
    return terms, step.grads.flat.copy(), model.params.flat.copy()


@needs_program
@pytest.mark.parametrize("arch", ARCHITECTURES, ids=lambda a: f"{a[2]}-{len(a[0])}-{a[1]}")
@pytest.mark.parametrize("L", [1, 3])
@pytest.mark.parametrize("optimizer", list(OPTIMIZERS))
def test_one_thread_replays_the_engine_bit_for_bit(arch, L, optimizer):
    replayed = run(arch, optimizer, threads=1, L=L)
    engine = run(arch, optimizer, threads=1, L=L, use_program=False)
    for (a, b) in zip(replayed[0], engine[0]):
        assert [type(v) for v in a] == [type(v) for v in b]     # float32 scalars, as the engine's
        assert [float(v) for v in a] == [float(v) for v in b]
    np.testing.assert_array_equal(replayed[1], engine[1])
    np.testing.assert_array_equal(replayed[2], engine[2])


@needs_program
@pytest.mark.parametrize("arch", ARCHITECTURES, ids=lambda a: f"{a[2]}-{len(a[0])}-{a[1]}")
@pytest.mark.parametrize("n", [2, 7, 40])
def test_two_threads_within_rounding_and_reproducible(arch, n):
    """Each instruction shared between two threads: the sums of the loss are added per thread and
    the products are split by rows or columns, so the last bits may differ from one thread, never
    between two runs."""
    first, again = run(arch, "adam", threads=2, n=n, L=2), run(arch, "adam", threads=2, n=n, L=2)
    one = run(arch, "adam", threads=1, n=n, L=2)
    assert [[float(v) for v in t] for t in first[0]] == [[float(v) for v in t] for t in again[0]]
    np.testing.assert_array_equal(first[1], again[1])
    np.testing.assert_array_equal(first[2], again[2])
    np.testing.assert_allclose([[float(v) for v in t] for t in first[0]],
                               [[float(v) for v in t] for t in one[0]], rtol=1e-5)
    np.testing.assert_allclose(first[2], one[2], rtol=1e-4, atol=1e-5)


@needs_program
@pytest.mark.parametrize("threads", [1, 2])
def test_agrees_with_the_reference(threads):
    """Loss terms, gradients and updated parameters agree with forward_backward + the optimizer's
    reference update, to float32 precision, with the noise fixed."""
    arch = ARCHITECTURES[4]
    model, ref = make(arch), make(arch)
    step = TrainStep(model, minivae.Adam(model.params, lr=1e-2), n_samples=2, threads=threads)
    ref_opt = minivae.Adam(dict(ref.params), lr=1e-2)
    assert step.runner == "program"
    tol = 50 * np.finfo(np.float32).eps
    for i in range(3):
        x = batch(9, seed=i)
        eps = np.random.default_rng(10 + i).standard_normal((2, 9, K)).astype(np.float32)
        terms = step(x, beta=0.5, eps=eps)
        ref_terms, ref_grads = ref.forward_backward(x, eps=eps, beta=0.5)
        ref_opt.step(ref_grads)
        for name in ("loss", "reconstruction", "kl"):
            np.testing.assert_allclose(float(getattr(terms, name)), float(getattr(ref_terms, name)), rtol=tol)
        np.testing.assert_allclose(step.grads.flat, ref_grads.flat, rtol=1e-3, atol=tol)
        np.testing.assert_allclose(model.params.flat, ref.params.flat, rtol=1e-4, atol=1e-6)


@needs_program
def test_a_program_per_batch_shape():
    """A smaller last batch gets a program of its own; a few are kept, the rest recorded again;
    each replays exactly what the engine computes for it. (A batch of one example is within
    rounding only: NumPy's matmul hands a one-row product to the BLAS's matrix-vector routine.)"""
    arch = ARCHITECTURES[1]
    replayed, engine = make(arch), make(arch)
    a = TrainStep(replayed, minivae.Adam(replayed.params), threads=1)
    b = TrainStep(engine, minivae.Adam(engine.params), threads=1, program=False)
    sizes = [8, 3, 8, 5, 6, 7, 2, 8]
    for i, n in enumerate(sizes):
        x = batch(n, seed=i)
        assert float(a(x).loss) == float(b(x).loss)
    np.testing.assert_array_equal(replayed.params.flat, engine.params.flat)
    assert len(a._program.programs) == program.ProgramStep.MAX_PROGRAMS
    one = batch(1, seed=99)
    np.testing.assert_allclose(float(a(one).loss), float(b(one).loss), rtol=1e-6)
    np.testing.assert_allclose(replayed.params.flat, engine.params.flat, rtol=1e-5, atol=1e-7)


@needs_program
def test_recorded_again_when_the_arrays_it_points_into_change():
    """The optimizer's state replaced by other arrays (not copied into): the program notices and
    records itself again instead of writing into the old ones."""
    arch = ARCHITECTURES[0]
    model = make(arch)
    opt = minivae.Adam(model.params, lr=1e-2)
    step = TrainStep(model, opt, threads=1)
    x = batch(6, seed=0)
    step(x)
    old = step._program.programs[(6, 1)]
    opt.state = {name: vector.copy() for name, vector in opt.state.items()}
    opt._flat_update = opt.flat_update(minivae.fast.dispatch.get_kernels(opt.backend))
    step(x)
    assert step._program.programs[(6, 1)] is not old
    reference = make(arch)
    ref_step = TrainStep(reference, minivae.Adam(reference.params, lr=1e-2), threads=1, program=False)
    ref_step(x)
    ref_step(x)
    np.testing.assert_array_equal(model.params.flat, reference.params.flat)


def test_what_runs_where():
    """The program declares what it replays; everything else runs the engine (or the reference),
    and says why."""
    arch = ARCHITECTURES[0]

    def runner(model, optimizer=None, **kw):
        step = TrainStep(model, optimizer or minivae.Adam(model.params), **kw)
        return step.runner, step.program_reason

    assert runner(make(arch, dtype="float64")) == ("engine", "a recorded step runs float32, not float64")
    assert runner(make(([8], None, "sigmoid")))[1].startswith("no compiled float32 passes for the activation")
    assert runner(make(arch, likelihood="gaussian"))[1].startswith("no compiled float32 loss")
    assert runner(make(arch, backend="strict"))[1] == "the strict backend's kernels are not compiled for the CPU"
    model = make(arch)
    assert runner(model, minivae.Adam(dict(model.params)))[1] == (
        "the optimizer does not update the model's own flat parameter vector")
    assert runner(model, program=False) == ("engine", "program=False")
    with pytest.warns(minivae.FastPathWarning):
        assert runner(model, objective="iwae", k=2)[0] == "reference"
    if AVAILABLE:
        assert runner(model) == ("program", None)


def test_the_recorder_refuses_what_it_cannot_replay():
    x = np.zeros((4, 6), dtype=np.float32)
    recorder = Recorder([x, np.zeros(3, dtype=np.float32)])
    with pytest.raises(RecordingError, match="bias_softplus"):
        recorder.bias_softplus(x, x[0], x)
    with pytest.raises(RecordingError, match="float64"):
        recorder.bias_add(x.astype(np.float64), np.zeros(6))
    with pytest.raises(RecordingError, match="outside the recorded arrays"):
        recorder.bias_add(np.zeros((4, 6), dtype=np.float32), np.zeros(6, dtype=np.float32))
    with pytest.raises(RecordingError, match="bias"):
        recorder.bias_activation(x, x[0], "softplus", x, x)
    with pytest.raises(RecordingError, match="strides"):
        recorder.matmul(x[:, ::2], x[:3].T[:3], x[:, :3])
    with pytest.raises(RecordingError, match="branch"):
        bool(Symbol(lambda inputs: 0.0) / 2)
    recorder.bias_add(x, x[1])
    assert recorder.rows[-1][0] == program.OPS.index("bias_add")


@needs_program
def test_two_python_threads_take_turns():
    """Two steps replayed at once from two Python threads (each on two threads of the pool) give
    what each gives alone: one program runs at a time."""
    arch = ARCHITECTURES[4]
    alone = [run(arch, "adam", threads=2, steps=20, n=16, seed=s)[2] for s in (0, 1)]
    results = {}

    def train(seed):
        results[seed] = run(arch, "adam", threads=2, steps=20, n=16, seed=seed)[2]
    workers = [threading.Thread(target=train, args=(s,)) for s in (0, 1)]
    for w in workers:
        w.start()
    for w in workers:
        w.join(timeout=120)
    for s in (0, 1):
        np.testing.assert_array_equal(results[s], alone[s])


def _loss_in_child(arch):
    return [float(t[0]) for t in run(arch, "adam", threads=2, steps=3, n=16)[0]]


@needs_program
@pytest.mark.skipif("fork" not in multiprocessing.get_all_start_methods(), reason="no fork() here")
def test_a_forked_child_gets_threads_of_its_own():
    """The parent's worker threads do not exist in a child made by fork(): the child starts a pool
    of its own and computes what the parent computes."""
    arch = ARCHITECTURES[4]
    here = _loss_in_child(arch)                       # the parent's pool is running now
    with multiprocessing.get_context("fork").Pool(1) as pool:
        there = pool.apply_async(_loss_in_child, (arch,)).get(timeout=120)
    assert there == here


@needs_program
def test_the_blas_entry_point_is_numpys_own():
    """The products go through the CBLAS sgemm of the BLAS that NumPy loaded (threadpoolctl's list)."""
    from threadpoolctl import threadpool_info

    from minivae.fast.blas import SGEMM_SYMBOLS, find_sgemm
    gemm = find_sgemm()
    assert gemm.address and (gemm.symbol, gemm.int_bits) in SGEMM_SYMBOLS
    assert gemm.library in {info["filepath"] for info in threadpool_info() if info["user_api"] == "blas"}
