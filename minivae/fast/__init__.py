"""The fast path: the reference math of :meth:`minivae.VAE.forward_backward` in preallocated buffers,
with fused elementwise kernels, for the models it declares it supports.

``engine`` (the fused step in two phases, and :func:`~minivae.fast.engine.unsupported_reason`, the
capability check), ``dispatch`` (which kernels a backend runs), ``array_kernels`` (in-place array
operations), ``sources`` (the CUDA formulas as source text), ``cuda_kernels`` (CuPy),
``cpu_library`` and ``cpu_kernels`` (the same formulas compiled for the CPU), ``updates`` (the
optimizers' flat updates) and ``threads`` (two threads for one step). Anything the engine does
not support runs the reference path instead (:class:`minivae.TrainStep`).
"""
