"""The training step recorded once and replayed in C++: no Python inside a step, two threads per
instruction.

The fused step (:mod:`minivae.fast.engine`) makes the same calls every step for a given batch size:
matrix products and kernel passes over the same preallocated buffers, in the same order. On the
CPU, a step of a small network is then mostly waiting: for the interpreter between some forty
short calls, and, on two threads, for each other's interpreter lock. So :class:`ProgramStep`
runs the engine once with a :class:`Recorder` as its kernels. Each call becomes one instruction of
a table (what to run, its operands as (root, byte offset), their row strides, its integer and
scalar arguments); :class:`Program` replays the table in C++ (:mod:`minivae.fast.program_source`)
with the compiled passes of :mod:`minivae.fast.cpu_library` and the CBLAS ``sgemm`` of NumPy's own
BLAS (:mod:`minivae.fast.blas`). The engine stays the one description of the step: the program is
what it called, not a second copy of the math.

Threads: each instruction is shared between T threads (a product by rows or columns of its result,
a pass by rows, a bias gradient by columns, the optimizer's update by ranges of its vectors), and
the threads meet at a spinning barrier after it. With T = 2 the BLAS runs one thread per call
(:func:`minivae.fast.threads.single_threaded_blas`).

What changes from step to step is bound at each run: the batch ``x`` and the noise ``eps`` (roots 0
and 1), and the scalars that depend on the step (:class:`Symbol`: the KL weight beta / N, the
optimizer's coefficients). The parameters, gradients, optimizer state and buffers are fixed
addresses; a program checks that they are still the arrays it recorded and is recorded anew where
they are not. The loss sums come back per instruction and thread (:class:`Sum`).

What it runs (:func:`unsupported_reason`): what the engine runs, in float32, on the NumPy
backend with the compiled library, for the activations and the likelihood that have compiled
float32 passes (:data:`PROGRAM_ACTIVATIONS`, :data:`PROGRAM_LIKELIHOODS`) and the optimizers with
flat compiled updates (:data:`PROGRAM_OPTIMIZERS`). Anything else runs the engine itself. The
tests check a replay against the engine and the reference (``tests/fast/test_program.py``).
"""
from __future__ import annotations

import contextlib
import math

import numpy as np

from minivae.fast import cpu_library
from minivae.fast.array_kernels import LEAKY_RELU_SLOPE
from minivae.fast.blas import find_sgemm
from minivae.fast.cpu_kernels import sample_stride
from minivae.fast.cpu_library import row_stride
from minivae.fast.engine import FusedStep
from minivae.fast.engine import unsupported_reason as engine_unsupported_reason
from minivae.fast.program_source import COLUMN, FIELDS, MAX_OPERANDS, OPS, SPLITS, WORDS, generic_parameters
from minivae.fast.threads import single_threaded_blas
from minivae.ops.layers import ACTIVATIONS
from minivae.ops.likelihoods import Bernoulli
from minivae.optim import SGD, Adam

try:
    from numpy.lib.array_utils import byte_bounds        # NumPy 2
except ImportError:                                      # pragma: no cover (NumPy 1.x)
    from numpy import byte_bounds

# what a program runs: activations with compiled float32 passes both ways, likelihoods with a
# compiled loss, optimizers with a compiled flat update
PROGRAM_ACTIVATIONS = {ACTIVATIONS[name] for name in ("relu", "leaky_relu", "tanh")}
PROGRAM_LIKELIHOODS = (Bernoulli,)
PROGRAM_OPTIMIZERS = (Adam, SGD)
INT32_MAX = 2**31 - 1


class RecordingError(Exception):
    """A call that has no instruction (another kernel, layout or dtype)."""


def unsupported_reason(model, optimizer, objective="elbo"):
    """None when a :class:`ProgramStep` runs ``model``'s step with ``optimizer``; else why not."""
    reason = engine_unsupported_reason(model, objective)
    if reason is not None:
        return reason
    if model.backend.kernel_family != "compiled-cpu":
        return f"the {model.backend.name} backend's kernels are not compiled for the CPU"
    if np.dtype(model.dtype) != np.float32:
        return f"a recorded step runs float32, not {np.dtype(model.dtype).name}"
    if model.activation_op not in PROGRAM_ACTIVATIONS:
        return f"no compiled float32 passes for the activation {model.activation_op!r}"
    if type(model.likelihood_op) not in PROGRAM_LIKELIHOODS:
        return f"no compiled float32 loss for the likelihood {model.likelihood_op!r}"
    if type(optimizer) not in PROGRAM_OPTIMIZERS:
        return f"no compiled update for the optimizer {type(optimizer).__name__}"
    if optimizer.params is not model.params:
        return "the optimizer does not update the model's own flat parameter vector"
    library = cpu_library.get(np.float32)
    if library is None or library.replay_run is None:
        return f"no compiled library ({cpu_library.status().get('float32', 'not built')})"
    if find_sgemm() is None:
        return "no CBLAS sgemm found in the BLAS that NumPy loaded"
    return None


class Symbol:
    """A scalar argument that changes from step to step; ``compute(inputs)`` gives it from the
    step's ``(beta, optimizer scalars)``. Dividing by a number gives another symbol (the engine's
    ``beta / N``); it has no truth value (a branch on it could not be replayed)."""

    __slots__ = ("compute",)

    def __init__(self, compute):
        self.compute = compute

    def __truediv__(self, divisor):
        compute = self.compute
        return Symbol(lambda inputs: compute(inputs) / divisor)

    def __bool__(self):
        raise RecordingError("a branch on a value that changes from step to step cannot be recorded")


class Sum:
    """A loss sum that the program computes: the partial sums that the instructions in ``slots``
    leave, one per thread."""

    __slots__ = ("slots",)

    def __init__(self, slots):
        self.slots = tuple(slots)

    def __add__(self, other):
        if not isinstance(other, Sum):
            return NotImplemented
        return Sum(self.slots + other.slots)


class Recorder:
    """The kernels' interface (the methods of :class:`minivae.fast.array_kernels.ArrayKernels`
    that the engine and the optimizers' flat updates call), recording each call as an instruction
    instead of running it. ``roots``: the arrays every operand must lie in (roots 0 and 1 are
    bound anew at each run). A call it cannot record raises :class:`RecordingError`."""

    def __init__(self, roots):
        self.roots = []
        self.rows = []          # the instructions, WORDS integers each
        self.symbols = []       # the scalar table's entries (Symbol)
        self.slots = 0
        for root in roots:
            self.add_root(root)

    def add_root(self, array):
        if not (array.flags.c_contiguous and array.dtype == np.float32):
            raise RecordingError("a root must be a contiguous float32 array")
        self.roots.append(array)

    def __getattr__(self, name):
        raise RecordingError(f"the kernel {name!r} has no instruction")

    # --- the calls ------------------------------------------------------------------------------
    def matmul(self, a, b, out):
        (M, K), N = a.shape, b.shape[1]
        ta, lda = self._matrix(a)
        tb, ldb = self._matrix(b)
        ldc = self._rows(out, M, N)
        if min(M, N, K) < 1:
            raise RecordingError(f"an empty product ({M} x {K} x {N})")
        self._emit("gemm", "rows" if M >= N else "columns", M, N, [(a, lda), (b, ldb), (out, ldc)],
                   ints=(K, ta, tb))

    def bias_add(self, out, b):
        rows, cols = out.shape
        self._emit("bias_add", "rows", rows, cols, [(out, self._rows(out, rows, cols)), (b, self._vector(b, cols))])

    def bias_activation(self, pre, b, activation, out, tmp):
        rows, cols = pre.shape
        in_place = out.ctypes.data == pre.ctypes.data and out.strides == pre.strides
        if activation == "tanh" and in_place:
            self._emit("bias_tanh", "rows", rows, cols,
                       [(out, self._rows(out, rows, cols)), (b, self._vector(b, cols))])
        elif activation == "relu" and in_place:
            self._kernel("bias_relu", rows, cols, [b, out])
        elif activation == "leaky_relu":
            self._kernel("bias_leaky_relu", rows, cols, [b, pre, out], scalars=[LEAKY_RELU_SLOPE])
        else:
            raise RecordingError(f"no instruction for bias + {activation}")
        return out

    def activation_backward(self, dh, activation, out, pre, tmp, tmp2):
        rows, cols = dh.shape
        if activation in ("relu", "tanh", "sigmoid"):
            self._kernel(f"{activation}_backward", rows, cols, [out, dh])
        elif activation == "leaky_relu":
            self._kernel("leaky_relu_backward", rows, cols, [pre, dh], scalars=[LEAKY_RELU_SLOPE])
        else:
            raise RecordingError(f"no instruction for the derivative of {activation}")
        return dh

    def reparameterize_kl(self, mu, logvar, eps, z, sigma, tmp):
        ld, NK = self._latent_layout(mu, logvar, eps, z)
        (rows, K), L = mu.shape, eps.shape[0]
        return self._emit("reparameterize_kl", "rows", rows, K, [(mu, ld), (logvar, ld), (eps, K), (z, K)],
                          ints=(L, NK), sums=True)

    def reparameterize_kl_backward(self, dz, eps, mu, logvar, sigma, c, dmu, dlogvar, tmp):
        ld, NK = self._latent_layout(mu, logvar, eps, dz)
        (rows, K), L = mu.shape, eps.shape[0]
        if row_stride(dmu, rows, K) != ld or row_stride(dlogvar, rows, K) != ld:
            raise RecordingError("dmu and dlogvar must have the layout of mu and logvar")
        self._emit("reparameterize_kl_backward", "rows", rows, K,
                   [(mu, ld), (logvar, ld), (dz, K), (eps, K), (dmu, ld), (dlogvar, ld)], ints=(L, NK),
                   scalars=[c])

    def bernoulli(self, logits, x, scale, tmp, tmp2):
        """One instruction per sample block of ``logits`` (L N, D), each block with the targets
        ``x`` (N, D)."""
        (M, D), N = logits.shape, x.shape[0]
        ld_l, ld_x = self._rows(logits, M, D), self._rows(x, N, D)
        if N == 0 or M % N:
            raise RecordingError("the logits must be whole sample blocks of the batch")
        total = None
        for k in range(M // N):
            part = self._emit("bernoulli", "rows", N, D, [(logits[k * N:(k + 1) * N], ld_l), (x, ld_x)],
                              scalars=[scale], sums=True)
            total = part if total is None else total + part
        return total

    def bias_grad(self, dout, db):
        rows, cols = dout.shape
        self._emit("column_sums", "columns", rows, cols,
                   [(dout, self._rows(dout, rows, cols)), (db, self._vector(db, cols))])

    def adam(self, g, beta1, beta2, step_size, eps_hat, p, s, r):
        return self._flat("adam", [g, p, s, r], [beta1, beta2, step_size, eps_hat])

    def sgd(self, g, lr, p):
        return self._flat("sgd", [g, p], [lr])

    def sgd_momentum(self, g, lr, momentum, nesterov, p, velocity):
        return self._flat("sgd_momentum", [g, p, velocity], [lr, momentum, nesterov])

    # --- layouts and the table ------------------------------------------------------------------
    def _flat(self, name, vectors, scalars):
        size = vectors[0].size
        if any(v.ndim != 1 or v.size != size for v in vectors):
            raise RecordingError(f"{name}: the vectors must be 1-D of one length")
        self._kernel(name, 1, size, vectors, scalars=scalars, split="columns")
        return True

    def _kernel(self, name, rows, cols, arrays, scalars=(), split="rows"):
        """A kernel of minivae.fast.sources: its arrays and scalars each in parameter order."""
        kinds = [kind for kind, _ in generic_parameters(name)]
        if kinds.count("array") != len(arrays) or kinds.count("scalar") != len(scalars):
            raise RecordingError(f"{name} takes {kinds.count('array')} arrays and {kinds.count('scalar')} scalars")
        operands = []
        for a in arrays:
            ld = row_stride(a, rows, cols)
            if ld is None:
                raise RecordingError(f"{name}: an operand of shape {a.shape} is not ({rows}, {cols}) "
                                     "with contiguous rows")
            operands.append((a, ld))
        self._emit(name, split, rows, cols, operands, scalars=scalars)

    def _rows(self, a, rows, cols):
        ld = row_stride(a, rows, cols)
        if ld is None or a.ndim != 2:
            raise RecordingError(f"an operand of shape {a.shape} is not ({rows}, {cols}) with contiguous rows")
        return ld

    def _vector(self, b, cols):
        if b.ndim != 1 or row_stride(b, 1, cols) != 0:
            raise RecordingError(f"a bias of shape {b.shape} is not a contiguous ({cols},) vector")
        return 0

    def _matrix(self, a):
        """(transposed, leading dimension) of a 2-D operand of a product: rows contiguous, or a
        ``.T`` view of such an array."""
        item = a.itemsize
        if a.ndim != 2:
            raise RecordingError("a product's operands are matrices")
        rows, cols = a.shape
        if cols == 1 or a.strides[1] == item:
            return 0, max(a.strides[0] // item if rows > 1 else cols, cols)
        if rows == 1 or a.strides[0] == item:
            return 1, max(a.strides[1] // item if cols > 1 else rows, rows)
        raise RecordingError(f"a product's operand with strides {a.strides}")

    def _latent_layout(self, mu, logvar, eps, z):
        """(row stride of mu and logvar, sample stride of eps and z) of the latent passes."""
        rows, K = mu.shape
        ld, NK = row_stride(mu, rows, K), sample_stride(eps, z)
        if ld is None or NK is None or row_stride(logvar, rows, K) != ld or eps.shape[1:] != mu.shape:
            raise RecordingError("the latent operands do not have the layout of the compiled passes")
        return ld, NK

    def _locate(self, a):
        """(root, byte offset) of the operand ``a``, which must lie inside one root."""
        if a.dtype != np.float32:
            raise RecordingError(f"a {a.dtype} operand (a program runs float32)")
        low, high = byte_bounds(a)
        for index, root in enumerate(self.roots):
            base = root.ctypes.data
            if base <= low and high <= base + root.nbytes:
                return index, a.ctypes.data - base
        raise RecordingError(f"an operand of shape {a.shape} outside the recorded arrays")

    def _scalar(self, value):
        if not isinstance(value, Symbol):
            constant = float(value)
            value = Symbol(lambda inputs: constant)
        for index, known in enumerate(self.symbols):
            if known is value:
                return index
        self.symbols.append(value)
        return len(self.symbols) - 1

    def _emit(self, op, split, rows, cols, operands, ints=(), scalars=(), sums=False):
        if len(operands) > MAX_OPERANDS or len(ints) > FIELDS["n"] or len(scalars) > FIELDS["s"]:
            raise RecordingError(f"{op}: too many arguments for one instruction")
        if op == "gemm" and max(rows, cols, *(ld for _, ld in operands), *ints) > INT32_MAX \
                and find_sgemm().int_bits == 32:
            raise RecordingError("a product beyond the 32-bit integers of this BLAS")
        row = [0] * WORDS
        row[COLUMN["op"]], row[COLUMN["split"]] = OPS.index(op), SPLITS.index(split)
        row[COLUMN["rows"]], row[COLUMN["cols"]] = rows, cols
        for i, (array, ld) in enumerate(operands):
            root, offset = self._locate(array)
            row[COLUMN["root"] + i], row[COLUMN["offset"] + i], row[COLUMN["ld"] + i] = root, offset, ld
        for i, value in enumerate(ints):
            row[COLUMN["n"] + i] = int(value)
        for i, value in enumerate(scalars):
            row[COLUMN["s"] + i] = self._scalar(value)
        row[COLUMN["slot"]] = self.slots if sums else -1
        self.rows.append(row)
        if sums:
            self.slots += 1
            return Sum([self.slots - 1])
        return None


class Program:
    """A recorded step: the instruction table, the scalars it reads, the sums it leaves, and the
    arrays it points into (kept alive here, with the engine whose buffers they include)."""

    def __init__(self, recorder, results, engine):
        self.code = np.array(recorder.rows, dtype=np.int64).reshape(-1, WORDS)
        self.symbols = list(recorder.symbols)
        self.scalars = np.zeros(max(1, len(self.symbols)), dtype=np.float64)
        self.bases = np.array([root.ctypes.data for root in recorder.roots], dtype=np.int64)
        # roots 0 and 1 (x, eps) are bound at each run: their layout is kept, not the arrays
        self.bound = [(root.shape, root.dtype) for root in recorder.roots[:2]]
        self.roots = [None, None, *recorder.roots[2:]]
        self.slots = recorder.slots
        self.sums = np.zeros(1, dtype=np.float64)
        self.results = results          # the Sums the step returns
        self.engine = engine
        self.library = cpu_library.get(np.float32)

    def run(self, x, eps, inputs, threads):
        """Replay on ``threads`` threads with the batch ``x`` and noise ``eps`` and the step's
        ``inputs`` = (beta, optimizer scalars); returns the values of :attr:`results` (floats)."""
        for array, (shape, dtype) in zip((x, eps), self.bound):
            # what the table's offsets assume of roots 0 and 1 (else it would write out of bounds)
            if array.shape != shape or array.dtype != dtype or not array.flags.c_contiguous:
                raise ValueError(f"a program recorded for C-ordered {shape} {dtype} arrays got "
                                 f"{array.shape} {array.dtype}")
        self.bases[0], self.bases[1] = x.ctypes.data, eps.ctypes.data
        for i, symbol in enumerate(self.symbols):
            self.scalars[i] = symbol.compute(inputs)
        if self.sums.size != max(1, self.slots * threads):
            self.sums = np.zeros(max(1, self.slots * threads), dtype=np.float64)
        code = self.code
        if self.library.replay_run(code.ctypes.data, code.shape[0], self.bases.ctypes.data,
                                   self.scalars.ctypes.data, self.sums.ctypes.data, threads):
            raise RuntimeError("the program runtime refused the program (no sgemm set, or a bad thread count)")
        sums = self.sums[:self.slots * threads].reshape(self.slots, threads).tolist()
        return [math.fsum(value for slot in result.slots for value in sums[slot]) for result in self.results]


class ProgramStep:
    """The fused step and the optimizer's update as one program per (batch size, samples): the
    runner of :class:`minivae.TrainStep` where :func:`unsupported_reason` is None."""

    MAX_PROGRAMS = 4    # e.g. a smaller last batch: keep a few, not every size

    def __init__(self, model, optimizer, grads):
        reason = unsupported_reason(model, optimizer)
        if reason is not None:
            raise ValueError(f"a recorded step cannot run this model: {reason}")
        self.model, self.optimizer, self.grads = model, optimizer, grads
        gemm = find_sgemm()
        cpu_library.get(np.float32).replay_set_gemm(gemm.address, gemm.int_bits)
        self.programs = {}
        self._noise = {}

    def noise(self, N, L):
        """A reused (L, N, K) buffer for the step's noise."""
        if (N, L) not in self._noise:
            self._noise[(N, L)] = self.model.xp.zeros((L, N, self.model.latent_dim), dtype=self.model.dtype)
        return self._noise[(N, L)]

    def __call__(self, x, eps, beta, threads):
        """One step on ``x`` (N, D) with noise ``eps`` (L, N, K), both C-ordered float32: forward,
        backward and the optimizer's update. Returns the batch's sums of the reconstruction NLL
        and of the KL term (float32 scalars); the gradients are in ``grads``."""
        program = self._program(x, eps)
        scalars = self.optimizer.begin_step()
        with single_threaded_blas() if threads > 1 else contextlib.nullcontext():
            nll_sum, kl_sum = program.run(x, eps, (beta, scalars), threads)
        return np.float32(nll_sum), np.float32(kl_sum)

    def _program(self, x, eps):
        key = (x.shape[0], eps.shape[0])
        program = self.programs.get(key)
        if program is None or not self._still_valid(program):
            if len(self.programs) >= self.MAX_PROGRAMS:
                self.programs.pop(next(iter(self.programs)))
            program = self.programs[key] = self.record(x, eps)
        return program

    def _fixed_roots(self):
        """The arrays besides the buffers that a program points into, as they are now."""
        return [self.model.params.flat, self.grads.flat, *self.optimizer.state.values()]

    def _still_valid(self, program):
        current = self._fixed_roots()
        return all(a is b for a, b in zip(program.roots[2:2 + len(current)], current))

    def record(self, x, eps):
        """The program of a step on batches shaped like ``x`` and noise shaped like ``eps``."""
        recorder = Recorder([x, eps, *self._fixed_roots()])
        engine = FusedStep(self.model, self.grads, kernels=recorder)
        workspace = engine.workspace(x.shape[0], eps.shape[0])
        for array in _arrays(workspace):
            recorder.add_root(array)
        beta = Symbol(lambda inputs: inputs[0])
        nll_sum, kl_sum = engine(x, eps, beta)
        # the update, with the coefficients that begin_step() returns at each run
        scalars = tuple(Symbol(lambda inputs, i=i: inputs[1][i]) for i in range(len(self.optimizer.scalar_names)))
        self.optimizer.flat_update(recorder)(self.grads.flat, 0, self.grads.flat.size, scalars)
        if not (isinstance(nll_sum, Sum) and isinstance(kl_sum, Sum)):
            raise RecordingError("the step's loss sums were not computed by recorded instructions")
        return Program(recorder, [nll_sum, kl_sum], engine)


def _arrays(workspace):
    """Every array of an engine workspace (its attributes and the items of its lists)."""
    for value in vars(workspace).values():
        for item in (value if isinstance(value, list) else [value]):
            if isinstance(item, np.ndarray):
                yield item
