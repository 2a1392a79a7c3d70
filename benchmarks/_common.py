"""Shared machinery of the benchmarks: one worker process per framework, the models, the GEMM-only
floor, and the description of the machine.

Why worker processes: PyTorch (OpenMP) and NumPy (OpenBLAS) each keep a pool of threads that spin
for a while after a parallel region. Timed in one process, each framework's spinning threads steal
the cores from the other's. Here each framework lives in its own process, the parent asks one
worker at a time for a block of timed steps and pauses between blocks, so the spinning has stopped
before the next block starts, and the frameworks take turns (their noise is shared evenly).
"""
from __future__ import annotations

import contextlib
import datetime
import functools
import math
import multiprocessing
import os
import platform
import resource
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
if REPO not in sys.path:
    sys.path.insert(0, REPO)

MODEL = dict(input_dim=784, hidden=400, latent=20)   # the PyTorch examples/vae architecture
# the models a step benchmark can time (--model): widths, activation; Bernoulli decoder, Adam
MODELS = {
    "pytorch-example": dict(input_dim=784, hidden=[400], latent=20, activation="relu"),
    # Burda et al.'s / Kingma and Welling's setting: two tanh layers of 200, 50 latent dimensions
    "classic": dict(input_dim=784, hidden=[200, 200], latent=50, activation="tanh"),
}
DEFAULT_MODEL = "pytorch-example"
PIXEL_MEAN = 0.13                                      # binarised-MNIST-like synthetic data

# workers: name -> the implementations it times
WORKERS = {
    "numpy": ("minivae-numpy", "gemm-numpy", "gemm-numpy-split"),
    "cupy": ("minivae-cupy", "gemm-cupy"),
    "torch-cpu": ("torch-cpu", "gemm-torch-cpu"),
    "torch-cuda": ("torch-cuda", "gemm-torch-cuda"),
}
GPU_WORKERS = ("cupy", "torch-cuda")   # timed with CUDA events on the device


# --------------------------------------------------------------------------------------------------
# the machine

def env_vars():
    prefixes = ("OPENBLAS_", "OMP_", "MKL_", "GOTO", "CUPY_", "CUDA_VISIBLE", "NVIDIA_TF32",
                "TORCH_ALLOW_TF32")
    return {k: v for k, v in sorted(os.environ.items()) if k.startswith(prefixes)}


def cpu_description():
    info = {"platform": platform.platform(), "python": platform.python_version(),
            "logical_cpus": os.cpu_count()}
    try:
        with open("/proc/cpuinfo") as f:
            lines = f.read().splitlines()
        fields = {}
        for line in lines:
            if ":" in line:
                key, value = (s.strip() for s in line.split(":", 1))
                fields.setdefault(key, value)
        info["cpu_model"] = fields.get("model name")
        info["cpu_family_model"] = f"{fields.get('cpu family')}/{fields.get('model')}"
        flags = fields.get("flags", "").split()
        info["simd"] = [f for f in ("avx2", "avx512f", "avx512_bf16", "amx_tile") if f in flags]
        info["cache_size"] = fields.get("cache size")
    except OSError:
        pass
    try:
        with open("/proc/meminfo") as f:
            info["mem_total"] = f.readline().split(":", 1)[1].strip()
    except OSError:
        pass
    return info


def median_ratio(impls, a, b):
    """The median time of implementation ``a`` over that of ``b`` in ``impls`` ({name: {"median_s": ...}}),
    or None where either was not measured."""
    ta, tb = (impls.get(name, {}).get("median_s") for name in (a, b))
    return None if ta is None or tb is None else ta / tb


def load_average():
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None


# --------------------------------------------------------------------------------------------------
# inside a worker

def synthetic_data(n, seed=0):
    import numpy as np
    rng = np.random.default_rng(seed)
    return (rng.random((n, MODEL["input_dim"]), dtype=np.float32) < PIXEL_MEAN).astype(np.float32)


def gemm_shapes(N, model=DEFAULT_MODEL):
    """The matrix products of one step of ``model`` (default the 784-400-20 model), forward then
    backward (no dx for the first layer; the mu/logvar head is one GEMM): ``(A shape, B shape, A
    transposed, B transposed)``, where a transposed operand is the ``.T`` view of a row-major
    array, as in the real backward (``h.T @ dout``, ``dout @ W.T``)."""
    return [shape for shape, _ in tagged_gemm_shapes(N, model)]


def tagged_gemm_shapes(N, model=DEFAULT_MODEL):
    """:func:`gemm_shapes` with each product's kind: ``"rows"`` (rows are the batch's examples:
    split by rows between two threads), ``"decoder_dw"`` or ``"encoder_dw"`` (a weight gradient)."""
    spec = MODELS[model]
    D, K, hidden = spec["input_dim"], spec["latent"], spec["hidden"]
    encoder = list(zip([D, *hidden], [*hidden, 2 * K]))                  # (in, out) per layer
    decoder = list(zip([K, *hidden[::-1]], [*hidden[::-1], D]))
    out = [(((N, a), (a, b), False, False), "rows") for a, b in encoder + decoder]
    for layers, kind, first_dx in ((decoder, "decoder_dw", True), (encoder, "encoder_dw", False)):
        for i in reversed(range(len(layers))):
            a, b = layers[i]
            out.append((((a, N), (N, b), True, False), kind))              # dW = h^T delta
            if i > 0 or first_dx:                                         # dx = delta W^T
                out.append((((N, b), (b, a), False, True), "rows"))
    return out


def _pytorch_example_shapes(N):
    """The 784-400-20 model's 11 products as first written out (a check of :func:`gemm_shapes`)."""
    D, H, K = MODEL["input_dim"], MODEL["hidden"], MODEL["latent"]
    return [
        ((N, D), (D, H), False, False), ((N, H), (H, 2 * K), False, False),      # forward
        ((N, K), (K, H), False, False), ((N, H), (H, D), False, False),
        ((H, N), (N, D), True, False), ((N, D), (D, H), False, True),            # decoder backward
        ((K, N), (N, H), True, False), ((N, H), (H, K), False, True),
        ((H, N), (N, 2 * K), True, False), ((N, 2 * K), (2 * K, H), False, True),  # encoder backward
        ((D, N), (N, H), True, False),
    ]


class GemmFloor:
    """Just the 11 matrix products of one step, with preallocated outputs: the floor that no
    implementation of this model can beat without changing the products."""

    def __init__(self, lib, N, device=None, model=DEFAULT_MODEL):
        import numpy as np
        rng = np.random.default_rng(0)
        self.tags = [kind for _, kind in tagged_gemm_shapes(N, model)]
        if lib == "torch":
            import torch
            array = lambda s: torch.from_numpy(rng.random(s, dtype=np.float32)).to(device)  # noqa: E731
            empty = lambda s: torch.empty(s, device=device)                                  # noqa: E731
            self.mm = lambda a, b, out: torch.matmul(a, b, out=out)
        else:
            xp = np if lib == "numpy" else __import__("cupy")
            array = lambda s: xp.asarray(rng.random(s, dtype=np.float32))                    # noqa: E731
            empty = lambda s: xp.empty(s, dtype=np.float32)                                  # noqa: E731
            self.mm = lambda a, b, out: xp.matmul(a, b, out=out)
        self.products = []
        for a, b, ta, tb in gemm_shapes(N, model):
            A = array(a[::-1]).T if ta else array(a)
            B = array(b[::-1]).T if tb else array(b)
            self.products.append((A, B, empty((a[0], b[1]))))

    def __call__(self):
        self._run(self.products)

    def _run(self, products):
        for a, b, out in products:
            self.mm(a, b, out)


class SplitGemmFloor(GemmFloor):
    """The same 11 products run the way minivae's two-thread step runs them (NumPy only): one
    BLAS thread each, two threads; first the 7 products whose rows are the batch's examples, each
    thread taking half of the rows; then the 4 weight-gradient products, decoder's on one thread,
    encoder's on the other. The floor of that way of splitting the work."""

    def __init__(self, N, model=DEFAULT_MODEL):
        from minivae.fast.threads import PairRunner
        super().__init__("numpy", N, model=model)
        h = N // 2

        def kind(name):
            return [p for p, tag in zip(self.products, self.tags) if tag == name]
        rows = kind("rows")
        halves = ([(a[:h], b, out[:h]) for a, b, out in rows], [(a[h:], b, out[h:]) for a, b, out in rows])
        networks = (kind("decoder_dw"), kind("encoder_dw"))
        self.phases = [tuple(functools.partial(self._run, products) for products in pair)
                       for pair in (halves, networks)]
        self.runner = PairRunner()

    def __call__(self):
        from minivae.fast.threads import single_threaded_blas
        with single_threaded_blas():
            self.runner.run_phases(self.phases)


class TorchVAE:
    """The PyTorch examples/vae model (fc1, fc21, fc22, fc3, fc4, ReLU), trained with the same
    objective as minivae: Bernoulli NLL from logits (binary_cross_entropy_with_logits, summed)
    plus the KL term, divided by the batch size; Adam; noise drawn in each step (randn_like)."""

    def __init__(self, device, lr=1e-3, seed=0, model=DEFAULT_MODEL):
        import torch
        from torch import nn
        torch.manual_seed(seed)
        D, H, K = MODEL["input_dim"], MODEL["hidden"], MODEL["latent"]
        spec = MODELS[model]
        if model != DEFAULT_MODEL:       # any other model: the same objective, its own layers
            self.torch = torch
            self.model = torch_deep_vae(spec).to(device)
            self.optimizer = torch.optim.Adam(self.model.parameters(), lr=lr)
            return

        class VAE(nn.Module):
            def __init__(self):
                super().__init__()
                self.fc1, self.fc21, self.fc22 = nn.Linear(D, H), nn.Linear(H, K), nn.Linear(H, K)
                self.fc3, self.fc4 = nn.Linear(K, H), nn.Linear(H, D)

            def forward(self, x):
                h1 = torch.relu(self.fc1(x))
                mu, logvar = self.fc21(h1), self.fc22(h1)
                z = mu + torch.randn_like(mu) * torch.exp(0.5 * logvar)
                return self.fc4(torch.relu(self.fc3(z))), mu, logvar

        self.torch = torch
        self.model = VAE().to(device)
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=lr)

    def __call__(self, x):
        F = self.torch.nn.functional
        self.optimizer.zero_grad()
        logits, mu, logvar = self.model(x)
        bce = F.binary_cross_entropy_with_logits(logits, x, reduction="sum")
        kld = -0.5 * self.torch.sum(1 + logvar - mu.pow(2) - logvar.exp())
        loss = (bce + kld) / x.shape[0]
        loss.backward()
        self.optimizer.step()
        return loss.detach()


class EventTimer:
    """Times a block of GPU work with CUDA events on the current stream: the device's time from the
    start event to the end event (ms resolution ~0.5 us), read after the end event completes."""

    def __init__(self, worker):
        if worker == "cupy":
            import cupy
            self.event = cupy.cuda.Event                                      # timing enabled
            self.elapsed_ms = cupy.cuda.get_elapsed_time
        else:
            import torch
            self.event = lambda: torch.cuda.Event(enable_timing=True)        # noqa: E731
            self.elapsed_ms = lambda start, end: start.elapsed_time(end)     # noqa: E731

    def start(self):
        event = self.event()
        event.record()
        return event

    def seconds_since(self, start):
        end = self.event()
        end.record()
        end.synchronize()
        return self.elapsed_ms(start, end) / 1e3


def torch_deep_vae(spec):
    """A PyTorch VAE of any widths and activation (tanh or ReLU): forward returns (logits, mu, logvar)."""
    from torch import nn
    import torch
    act = {"tanh": nn.Tanh, "relu": nn.ReLU}[spec["activation"]]
    D, K, hidden = spec["input_dim"], spec["latent"], spec["hidden"]

    def mlp(widths):
        layers = []
        for a, b in zip(widths[:-1], widths[1:]):
            layers += [nn.Linear(a, b), act()]
        return layers

    class DeepVAE(nn.Module):
        def __init__(self):
            super().__init__()
            self.encoder = nn.Sequential(*mlp([D, *hidden]), nn.Linear(hidden[-1], 2 * K))
            self.decoder = nn.Sequential(*mlp([K, *hidden[::-1]]), nn.Linear(hidden[0], D))

        def forward(self, x):
            mu, logvar = self.encoder(x).chunk(2, dim=1)
            z = mu + torch.randn_like(mu) * torch.exp(0.5 * logvar)
            return self.decoder(z), mu, logvar

    return DeepVAE()


class Worker:
    """Runs in the child process: builds one framework's implementations and times them."""

    def __init__(self, name, tf32=False, threads="auto", model=DEFAULT_MODEL, cpu_threads=None, program=True):
        self.name, self.impls, self.tf32, self.threads = name, {}, tf32, threads
        self.model_name, self.cpu_threads, self.program = model, cpu_threads, program
        if cpu_threads is not None:     # the BLAS and PyTorch's pool: kept for the worker's life
            import numpy  # noqa: F401 - threadpoolctl limits the libraries loaded: load the BLAS first
            from threadpoolctl import threadpool_limits
            self._limits = threadpool_limits(cpu_threads)
        self.device = "cuda" if name in GPU_WORKERS else "cpu"
        if name == "torch-cpu" or name == "torch-cuda":
            import torch
            self.torch = torch
            if cpu_threads is not None:
                torch.set_num_threads(cpu_threads)
            if name == "torch-cuda":
                torch.backends.cuda.matmul.allow_tf32 = tf32
                torch.backends.cudnn.allow_tf32 = tf32
        if name == "cupy":   # read when CuPy is imported, which is after this in the worker
            if tf32:
                os.environ["CUPY_TF32"] = "1"
            else:
                os.environ.pop("CUPY_TF32", None)
        self.timer = EventTimer(name) if name in GPU_WORKERS else None

    # -- info
    def info(self):
        import numpy
        out = {"worker": self.name, "pid": os.getpid(), "numpy": numpy.__version__}
        try:
            from threadpoolctl import threadpool_info
            out["threadpools"] = [{k: v for k, v in pool.items() if k != "filepath"}
                                  for pool in threadpool_info()]
        except ImportError:
            pass
        if self.name == "numpy":
            import minivae
            from minivae.fast import cpu_library as host_kernels
            host_kernels.get("float32")
            out["kernels"] = host_kernels.status()["float32"]   # compiled, or NumPy passes
            spec = MODELS[self.model_name]
            model = minivae.VAE(spec["input_dim"], spec["hidden"], spec["latent"], activation=spec["activation"])
            step = minivae.TrainStep(model, minivae.Adam(model.params), threads=self.threads, program=self.program)
            # the recorded step replayed in C++, or the Python engine (and why)
            out["step_runner"] = step.runner if step.program_reason is None else f"{step.runner}: {step.program_reason}"
        if self.name.startswith("torch"):
            torch = self.torch
            out["torch"] = torch.__version__
            out["torch_threads"] = torch.get_num_threads()
            out["torch_blas"] = next((line.strip().lstrip("- ") for line in torch.__config__.show().splitlines()
                                      if "Math Kernel" in line or "OpenBLAS" in line), None)
            out["torch_cpu_capability"] = torch.backends.cpu.get_cpu_capability()
            if self.name == "torch-cuda":
                out["gpu"] = torch.cuda.get_device_name()
                out["torch_cuda"] = torch.version.cuda
                out["tf32"] = torch.backends.cuda.matmul.allow_tf32
        if self.name == "cupy":
            import cupy
            out["cupy"] = cupy.__version__
            props = cupy.cuda.runtime.getDeviceProperties(0)
            out["gpu"] = props["name"].decode() if isinstance(props["name"], bytes) else props["name"]
            out["compute_capability"] = cupy.cuda.Device(0).compute_capability
            out["multiprocessors"] = props.get("multiProcessorCount")
            out["gpu_memory_gib"] = round(props.get("totalGlobalMem", 0) / 2 ** 30, 1)
            out["cuda_runtime"] = cupy.cuda.runtime.runtimeGetVersion()
            out["cuda_driver"] = cupy.cuda.runtime.driverGetVersion()
            out["tf32"] = os.environ.get("CUPY_TF32") == "1"
        if self.device == "cuda":
            out["timing"] = "CUDA events around each block (warm-up steps first, synchronised before the start)"
        return out

    # -- setup
    def setup(self, N, warmup):
        import numpy as np
        host_x = synthetic_data(N, seed=N)
        self.impls = {}
        if self.name in ("numpy", "cupy"):
            import minivae
            spec = MODELS[self.model_name]
            model = minivae.VAE(spec["input_dim"], spec["hidden"], spec["latent"], activation=spec["activation"],
                                backend=self.name, seed=0)
            step = minivae.TrainStep(model, minivae.Adam(model.params, lr=1e-3), threads=self.threads,
                                     program=self.program)
            x = model.backend.to_device(host_x)
            xp = model.xp
            self.acc = xp.zeros((), dtype=np.float32)

            def run_minivae():
                terms = step(x)
                self.acc += terms.loss   # accumulate on the device: no host sync per step
            self.impls[f"minivae-{self.name}"] = run_minivae
            self.impls[f"gemm-{self.name}"] = GemmFloor(self.name, N, model=self.model_name)
            if self.name == "numpy":
                self.impls["gemm-numpy-split"] = SplitGemmFloor(N, model=self.model_name)
            self.sync = model.backend.synchronize
            self.pool_bytes = ((lambda: xp.get_default_memory_pool().total_bytes())
                               if self.name == "cupy" else (lambda: None))
        else:
            torch = self.torch
            device = "cuda" if self.name == "torch-cuda" else "cpu"
            net = TorchVAE(device, model=self.model_name)
            x = torch.from_numpy(host_x).to(device)
            self.acc = torch.zeros((), device=device)

            def run_torch():
                self.acc += net(x)
            self.impls[self.name] = run_torch
            self.impls[f"gemm-{self.name}"] = GemmFloor("torch", N, device=device, model=self.model_name)
            self.sync = (torch.cuda.synchronize if device == "cuda" else (lambda: None))
            self.pool_bytes = ((lambda: torch.cuda.max_memory_reserved()) if device == "cuda"
                               else (lambda: None))
        estimates = {}
        for impl, fn in self.impls.items():
            for _ in range(warmup):   # kernel compilation, CUDA context, first-touch of buffers
                fn()
            self.sync()
            t0 = time.perf_counter()
            fn()
            self.sync()
            estimates[impl] = time.perf_counter() - t0
        return estimates

    # -- timing
    def time(self, impl, steps):
        """Time ``steps`` steps after a few untimed ones: a block starts after a pause, in which
        the allocator may have returned memory and the thread pools gone to sleep; every
        implementation gets its steady state back before the clock starts."""
        fn = self.impls[impl]
        call_usage0, call_t0 = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
        for _ in range(max(2, steps // 10)):
            fn()
        self.sync()
        usage0 = resource.getrusage(resource.RUSAGE_SELF)
        t0 = time.perf_counter()
        start = self.timer.start() if self.timer is not None else None
        for _ in range(steps):
            fn()
        device_seconds = self.timer.seconds_since(start) if self.timer is not None else None
        self.sync()
        wall = time.perf_counter() - t0
        elapsed = wall if device_seconds is None else device_seconds
        usage = resource.getrusage(resource.RUSAGE_SELF)
        faults = usage.ru_minflt - usage0.ru_minflt
        # wall and CPU time of the whole call (warm-up included), to compare with the machine's
        # busy time over the same call (see other_load)
        call_cpu = (usage.ru_utime + usage.ru_stime) - (call_usage0.ru_utime + call_usage0.ru_stime)
        return {"seconds_per_step": elapsed / steps, "wall_seconds_per_step": wall / steps,
                "faults_per_step": faults / steps,
                "seconds": time.perf_counter() - call_t0, "cpu_seconds": call_cpu,
                "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                "device_pool_bytes": self.pool_bytes()}

    # -- one epoch over resident data
    def epoch(self, batch_size, n_examples, warmup_batches=5):
        import numpy as np
        host_data = synthetic_data(n_examples, seed=1)
        B = batch_size
        n_batches = n_examples // B   # drop the ragged last batch, as both loops do
        if self.name in ("numpy", "cupy"):
            import minivae
            model = minivae.VAE(MODEL["input_dim"], [MODEL["hidden"]], MODEL["latent"],
                                backend=self.name, seed=0)
            step = minivae.TrainStep(model, minivae.Adam(model.params, lr=1e-3), threads=self.threads,
                                     program=self.program)
            xp = model.xp
            data = model.backend.to_device(host_data)          # resident on the device
            batch = xp.empty((B, MODEL["input_dim"]), dtype=np.float32)
            rng = model.backend.random(0)

            def run_epoch(limit):
                order = rng.permutation(n_examples)
                total = xp.zeros((), dtype=np.float32)
                for i in range(limit):
                    xp.take(data, order[i * B:(i + 1) * B], axis=0, out=batch)
                    total += step(batch).loss
                return float(total) / limit   # the one host read of the epoch
            sync = model.backend.synchronize
        else:
            torch = self.torch
            device = "cuda" if self.name == "torch-cuda" else "cpu"
            net = TorchVAE(device)
            data = torch.from_numpy(host_data).to(device)
            batch = torch.empty((B, MODEL["input_dim"]), device=device)

            def run_epoch(limit):
                order = torch.randperm(n_examples, device=device)
                total = torch.zeros((), device=device)
                for i in range(limit):
                    torch.index_select(data, 0, order[i * B:(i + 1) * B], out=batch)
                    total += net(batch)
                return float(total) / limit
            sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
        run_epoch(min(warmup_batches, n_batches))
        sync()
        faults0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        t0 = time.perf_counter()
        mean_loss = run_epoch(n_batches)
        sync()
        elapsed = time.perf_counter() - t0
        faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults0
        return {"seconds": elapsed, "batches": n_batches, "examples_per_second": n_batches * B / elapsed,
                "faults_per_step": faults / n_batches, "mean_loss": mean_loss,
                "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def _worker_main(name, tf32, threads, model, cpu_threads, program, conn):
    try:
        worker = Worker(name, tf32, threads, model, cpu_threads, program)
        conn.send(("ok", worker.info()))
    except Exception as error:  # noqa: BLE001 - report any failure to the parent
        conn.send(("error", f"{type(error).__name__}: {error}"))
        return
    while True:
        command, args = conn.recv()
        if command == "quit":
            return
        try:
            conn.send(("ok", getattr(worker, command)(*args)))
        except Exception as error:  # noqa: BLE001
            conn.send(("error", f"{type(error).__name__}: {error}"))


class WorkerHandle:
    def __init__(self, name, tf32=False, threads="auto", model=DEFAULT_MODEL, cpu_threads=None, program=True):
        context = multiprocessing.get_context("spawn")
        self.name = name
        self.conn, child = context.Pipe()
        self.process = context.Process(target=_worker_main,
                                       args=(name, tf32, threads, model, cpu_threads, program, child),
                                       daemon=True)
        self.process.start()
        status, self.info = self.conn.recv()
        if status != "ok":
            self.close()
            raise RuntimeError(f"worker {name}: {self.info}")

    def call(self, command, *args):
        self.conn.send((command, args))
        status, value = self.conn.recv()
        if status != "ok":
            raise RuntimeError(f"worker {self.name}.{command}: {value}")
        return value

    def close(self):
        try:
            self.conn.send(("quit", ()))
        except (BrokenPipeError, OSError):
            pass
        self.process.join(timeout=10)
        if self.process.is_alive():
            self.process.terminate()


def available_workers(requested):
    """The workers that can run here, and why the others cannot."""
    from minivae.backend import cupy_gpu_available
    names, skipped = [], {}
    for name in requested:
        if name == "cupy" and not cupy_gpu_available():
            skipped[name] = "no usable CUDA GPU (cupy.cuda.is_available() is False)"
            continue
        if name.startswith("torch"):
            try:
                import importlib.util
                if importlib.util.find_spec("torch") is None:
                    skipped[name] = "PyTorch is not installed (pip install torch==2.13.0)"
                    continue
            except ImportError:
                skipped[name] = "PyTorch is not installed"
                continue
            if name == "torch-cuda":
                import torch
                if not torch.cuda.is_available():
                    skipped[name] = "PyTorch has no CUDA device here"
                    continue
        names.append(name)
    return names, skipped


def busy_cpu_seconds():
    """CPU seconds spent by everything on the machine so far (all CPUs, not idle), or None."""
    try:
        with open("/proc/stat") as f:
            fields = [int(v) for v in f.readline().split()[1:]]
    except (OSError, ValueError):
        return None
    user, nice, system, idle, iowait, irq, softirq, steal = (fields + [0] * 8)[:8]
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


def other_load(busy_before, busy_after, block):
    """The share of the machine's CPUs used by *other* processes during a timed block: the
    machine's busy CPU time minus the worker's own, over wall time x CPUs. None if unknown."""
    if busy_before is None or busy_after is None:
        return None
    others = (busy_after - busy_before) - block["cpu_seconds"]
    return max(0.0, others) / (block["seconds"] * (os.cpu_count() or 1))


def median(values):
    values = sorted(values)
    n = len(values)
    return values[n // 2] if n % 2 else 0.5 * (values[n // 2 - 1] + values[n // 2])


def quartiles(values):
    values = sorted(values)
    q = lambda f: values[min(len(values) - 1, max(0, int(round(f * (len(values) - 1)))))]  # noqa: E731
    return q(0.25), q(0.75)


def fmt_ms(seconds):
    return "—" if seconds is None else (f"{seconds * 1e3:.3f}" if seconds < 0.01 else f"{seconds * 1e3:.2f}")


def fmt_ratio(value):
    return "—" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.2f}"


def new_record(benchmark, command, skipped, **details):
    """The JSON record every benchmark writes: what ran, when, where, and under which load."""
    return {"benchmark": benchmark, "created": datetime.datetime.now(datetime.timezone.utc).isoformat(),
            "command": command, **details, "machine": cpu_description(), "env": env_vars(),
            "load_average_before": load_average(), "skipped": skipped, "workers": {}, "results": []}


@contextlib.contextmanager
def open_workers(names, tf32, record, threads="auto", model=DEFAULT_MODEL, cpu_threads=None, program=True):
    """Start one worker process per framework (their info goes into ``record``), yield the handles
    ``{name: WorkerHandle}``, and close them, recording the load average, however the run ends.
    ``threads``, ``program``: minivae's ``TrainStep(threads=..., program=...)``."""
    handles = {}
    try:
        for name in names:
            handles[name] = WorkerHandle(name, tf32=tf32, threads=threads, model=model, cpu_threads=cpu_threads,
                                         program=program)
            record["workers"][name] = handles[name].info
        yield handles
    finally:
        for handle in handles.values():
            handle.close()
        record["load_average_after"] = load_average()
