"""The optimizers' flat updates: one fused kernel where the backend has one, else chunked in-place
array passes.

An optimizer (:mod:`minivae.optim`) whose parameters and gradients are views into one flat vector
each updates ranges [lo, hi) of its vectors with a :class:`FlatUpdate`:

* the backend's kernels (:func:`minivae.fast.dispatch.get_kernels`) run the range as one pass
  where they have the update: CUDA on CuPy; on NumPy the same kernel compiled for the CPU, where a
  C++ compiler is at hand (:mod:`minivae.fast.cpu_library`), called without the interpreter lock;
  their ``adam`` / ``sgd`` / ``sgd_momentum`` return False where they have none;
* otherwise (and on the strict stand-in) the range is updated in place in chunks of at most
  :data:`CHUNK` entries, with one preallocated scratch buffer per range (no allocation, no page
  faults): Adam is ten passes at NumPy's per-element speed.

Both are the optimizer's reference ``_update`` with the same arithmetic reordered into in-place
passes (tested equal to it: ``tests/test_optim.py``).
"""
from __future__ import annotations

from minivae.backend import Array, get_array_module
from minivae.fast.array_kernels import ArrayKernels

# Elements per chunk of the flat update (and the size of its scratch vector). Chunks that fit the
# L2 cache (32k) were no faster on a 2-core EPYC (Zen 3) than 1M-entry ones, and on two threads
# they were slower: every NumPy call hands the interpreter lock over, so fewer, longer calls win
# (batch 128, two threads: 8.1 ms per step with 64k chunks, 7.5 ms unchunked).
CHUNK = 1 << 20

class FlatUpdate:
    """Updates entries [lo, hi) of one optimizer's flat parameter vector ``p`` (P,) and its state
    vectors ``state`` ``{name: (P,)}`` from a flat gradient vector (P,), with ``kernels``.

    Subclasses give the update twice: :meth:`fused` (one kernel) and :meth:`chunk` (array passes).
    Disjoint ranges may be updated on several threads at once.
    """

    def __init__(self, p: Array, state: dict[str, Array], kernels: ArrayKernels):
        self.p, self.state, self.kernels = p, state, kernels
        self._chunk_cache = {}

    def __call__(self, g: Array, lo: int, hi: int, scalars: tuple[float, ...]) -> None:
        state = {name: vector[lo:hi] for name, vector in self.state.items()}
        if self.fused(self.p[lo:hi], g[lo:hi], state, scalars):
            return
        for chunk in self.chunks(g, lo, hi):
            self.chunk(*chunk, scalars)

    def fused(self, p: Array, g: Array, state: dict[str, Array], scalars: tuple[float, ...]) -> bool:
        """The update of the 1-D ``p`` as one kernel of ``self.kernels``; False, and nothing done,
        where they have none for these vectors."""
        raise NotImplementedError

    def chunk(self, p: Array, g: Array, state: dict[str, Array], tmp: Array,
              scalars: tuple[float, ...]) -> None:
        """The update, in place, on 1-D slices, with the scratch ``tmp`` of the same length."""
        raise NotImplementedError

    def chunks(self, g: Array, lo: int, hi: int) -> list:
        """[lo, hi) of the flat vectors cut into chunks of :data:`CHUNK`: a list of (p, g, {state name:
        view}, scratch) views with a scratch buffer of the range's own, made once per range and
        gradient vector (slicing some 60 views per step costs more than a pass)."""
        key = (lo, hi)
        cached = self._chunk_cache.get(key)
        if cached is not None and cached[0] is g:
            return cached[1]
        p = self.p
        scratch = get_array_module(p).zeros(min(CHUNK, max(1, hi - lo)), dtype=p.dtype)
        chunks = [(p[a:b], g[a:b], {name: vector[a:b] for name, vector in self.state.items()},
                   scratch[:b - a])
                  for a in range(lo, hi, CHUNK) for b in [min(a + CHUNK, hi)]]
        self._chunk_cache[key] = (g, chunks)
        return chunks


class SGDUpdate(FlatUpdate):
    """:class:`minivae.optim.SGD`'s update; ``scalars`` = (lr, momentum)."""

    def __init__(self, p: Array, state: dict[str, Array], kernels: ArrayKernels, nesterov: bool):
        super().__init__(p, state, kernels)
        self.nesterov = nesterov

    def fused(self, p, g, state, scalars):
        lr, momentum = scalars
        if "velocity" not in state:       # momentum 0 (the state is made where momentum is not)
            return self.kernels.sgd(g, lr, p)
        return self.kernels.sgd_momentum(g, lr, momentum, 1.0 if self.nesterov else 0.0, p,
                                         state["velocity"])

    def chunk(self, p, g, state, tmp, scalars):
        lr, momentum = scalars
        if not momentum:
            tmp[...] = g
        else:
            velocity = state["velocity"]
            velocity *= momentum
            velocity += g
            if self.nesterov:
                get_array_module(p).multiply(velocity, momentum, out=tmp)
                tmp += g
            else:
                tmp[...] = velocity
        tmp *= lr
        p -= tmp


class AdamUpdate(FlatUpdate):
    """:class:`minivae.optim.Adam`'s update; ``scalars`` = (b1, b2, a, eps_hat):
    s = b1 s + g, r = b2 r + g^2, p -= a s / (sqrt(r) + eps_hat)."""

    def fused(self, p, g, state, scalars):
        beta1, beta2, step_size, eps_hat = scalars
        return self.kernels.adam(g, beta1, beta2, step_size, eps_hat, p, state["exp_sum"],
                                 state["exp_sum_sq"])

    def chunk(self, p, g, state, tmp, scalars):
        beta1, beta2, step_size, eps_hat = scalars
        xp = get_array_module(p)
        s, r = state["exp_sum"], state["exp_sum_sq"]
        s *= beta1                           # s = b1 s + g
        s += g
        xp.multiply(g, g, out=tmp)           # r = b2 r + g^2
        r *= beta2
        r += tmp
        xp.sqrt(r, out=tmp)                  # p -= a s / (sqrt(r) + eps_hat)
        tmp += eps_hat
        xp.divide(s, tmp, out=tmp)
        tmp *= step_size
        p -= tmp
