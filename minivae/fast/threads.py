"""Two cores for one training step on the CPU: a second thread, and the BLAS kept to one thread.

NumPy runs every elementwise pass on one core, and OpenBLAS's own threads, which split each matrix
product, spin on the other cores between products (for about 0.1 s after each) so that a second
Python thread finds no free core. The parallel step therefore turns the BLAS threads off for the
duration of a step (:func:`single_threaded_blas`) and splits the work itself (:class:`PairRunner`):
each thread runs the forward and backward pass of half of the batch, then the weight gradients
and the optimizer update of one of the two networks. The halves are coarse, a few dozen NumPy calls each, because NumPy
releases the interpreter lock only inside a call: many short calls on two threads would spend
their time handing the lock back and forth.
"""
from __future__ import annotations

import contextlib
import threading

_blas_controller = None
_blas_lock = threading.Lock()


def _blas():
    """The threadpoolctl controller of the BLAS libraries loaded now (found once: a scan)."""
    global _blas_controller
    if _blas_controller is None:
        from threadpoolctl import ThreadpoolController
        _blas_controller = ThreadpoolController().select(user_api="blas")
    return _blas_controller


@contextlib.contextmanager
def single_threaded_blas():
    """Limit every loaded BLAS to one thread inside the block, then restore each one's count."""
    libraries = _blas().lib_controllers
    with _blas_lock:
        before = [lib.num_threads for lib in libraries]
        for lib, n in zip(libraries, before):
            if n != 1:
                lib.set_num_threads(1)
    try:
        yield
    finally:
        with _blas_lock:
            for lib, n in zip(libraries, before):
                if n != 1:
                    lib.set_num_threads(n)


class PairRunner:
    """Two threads for a sequence of phases: the caller's and one worker thread (started on first
    use and kept).

    ``runner.run_phases([(main_1, other_1), (main_2, other_2), ...], between)`` runs ``other_k``
    on the worker while ``main_k`` runs on the caller's thread; neither thread starts phase k + 1
    before both have finished phase k (a barrier), and ``between()``, when given, runs once at
    each phase boundary on whichever thread arrives last. Returns ([main results], [other
    results]). ``run(main, other)`` is one phase: returns (main(), other()).

    A hand-over wakes a sleeping thread, some 20-50 us on a virtual machine: with the barrier, a
    phase boundary costs one wake-up (the thread that arrived first), not two (the worker
    reporting to the caller, the caller handing the next phase to the worker). An exception on
    either side stops both sides at the next boundary and is raised after both have stopped, so
    neither is left running on shared buffers."""

    def __init__(self):
        self._pool = None

    def run(self, main, other):
        first, second = self.run_phases([(main, other)])
        return first[0], second[0]

    def run_phases(self, phases, between=None):
        barrier = threading.Barrier(2, action=between)

        def side(index):
            results = []
            try:
                for k, phase in enumerate(phases):
                    if k:
                        barrier.wait()
                    results.append(phase[index]())
            except threading.BrokenBarrierError:
                return None          # the other side failed: its exception is the one raised
            except BaseException:
                barrier.abort()      # release the other side from its wait
                raise
            return results

        if self._pool is None:
            from concurrent.futures import ThreadPoolExecutor
            self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="minivae-step")
        future = self._pool.submit(side, 1)
        try:
            first = side(0)
        finally:
            second = future.result()
        return first, second
