"""The C++ that replays a recorded training step (:mod:`minivae.fast.program`): the instruction
layout, the interpreter, and the pool of threads that shares each instruction out.

A program is a table of instructions, one per call of the fused step: a matrix product (through the
CBLAS ``sgemm`` of NumPy's own BLAS, :mod:`minivae.fast.blas`) or one of the compiled passes of
:mod:`minivae.fast.cpu_library` (float32). Every instruction names its operands as (root, byte
offset): root 0 is the batch ``x`` and root 1 the noise ``eps``, which change from step to step;
the others are the parameters, the gradients, the optimizer's state and the step's buffers. Thread
``t`` of ``T`` runs its share of each instruction -- rows or columns of a product's result, rows
of a pass, columns of a column sum, a range of the optimizer's vectors -- and then all of them
meet at a spinning barrier: about a microsecond, where waking a sleeping thread costs 20-50 us.

This module computes nothing: it only writes source text, compiled into the float32 library of
:mod:`minivae.fast.cpu_library` after the kernels it calls.
"""
from __future__ import annotations

from itertools import accumulate

from minivae.fast.sources import CUDA_KERNELS, SCALAR_PARAMS, kernel_params

# The words of one instruction, in order (all 64-bit integers): name -> count.
FIELDS = {
    "op": 1,        # index into OPS
    "split": 1,     # index into SPLITS
    "rows": 1,      # the (rows, cols) grid that is shared between the threads (a product: M, N)
    "cols": 1,
    "slot": 1,      # where the instruction's partial sum goes (sums[slot * T + t]); -1: none
    "root": 8,      # per operand: which base address
    "offset": 8,    # per operand: bytes from that base
    "ld": 8,        # per operand: row stride in elements (0: a vector that every row shares)
    "n": 4,         # integer arguments (a product: K, A transposed, B transposed)
    "s": 4,         # indices into the table of scalars (double), converted to float
}
WORDS = sum(FIELDS.values())
COLUMN = dict(zip(FIELDS, accumulate([0, *FIELDS.values()])))   # where each field starts in a row
MAX_OPERANDS = FIELDS["root"]

# How an instruction is shared: "whole" (thread 0 runs it), by "rows" or by "columns" of its grid
# (columns in blocks of 16 floats, one cache line, so that no two threads write into one line).
SPLITS = ("whole", "rows", "columns")

# The passes written by hand for the program (the CUDA formulas' float32 forms and two helpers)...
HAND_WRITTEN_OPS = ("gemm", "bias_add", "bias_tanh", "reparameterize_kl", "reparameterize_kl_backward",
                    "bernoulli", "column_sums")
# ... and the kernels of minivae.fast.sources, called as compiled for the CPU (arrays in parameter
# order, then rows, cols and a row stride per array).
GENERIC_OPS = ("bias_relu", "bias_leaky_relu", "relu_backward", "leaky_relu_backward", "tanh_backward",
               "sigmoid_backward", "adam", "sgd", "sgd_momentum")
OPS = HAND_WRITTEN_OPS + GENERIC_OPS


def generic_parameters(name):
    """The parameters of the compiled kernel ``name`` in order, each ("array" | "scalar" | "int",
    name); raw (hand-indexed) parameters have no place in a program."""
    in_params, out_params, _ = CUDA_KERNELS[name]
    scalars = SCALAR_PARAMS.get(name, ())
    out = []
    for ctype, pname, raw in kernel_params(in_params) + kernel_params(out_params):
        if raw:
            raise ValueError(f"kernel {name!r} has a raw parameter {pname!r}")
        out.append(("int" if ctype == "int32" else "scalar", pname) if pname in scalars else ("array", pname))
    return out


def _generic_case(name):
    args, counts = [], {"array": 0, "scalar": 0, "int": 0}
    for kind, _ in generic_parameters(name):
        i = counts[kind]
        counts[kind] += 1
        args.append({"array": f"at(f, in, {i}, r0, c0)", "scalar": f"(float)f.scalars[in.s[{i}]]",
                     "int": f"(int)in.n[{i}]"}[kind])
    args += ["r1 - r0", "c1 - c0"] + [f"in.ld[{i}]" for i in range(counts["array"])]
    return f"      case OP_{name}: {name}({', '.join(args)}); break;"


RUNTIME_SOURCE = r"""
#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <mutex>
#include <thread>
#include <unistd.h>
#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
static inline void relax() { _mm_pause(); }
#else
static inline void relax() { std::this_thread::yield(); }
#endif

namespace {

struct Frame {
  const Instruction* code;
  long long count;
  const long long* bases;     // root -> address
  const double* scalars;
  double* sums;               // slot * threads + thread
  int threads;
};

inline float* at(const Frame& f, const Instruction& in, int i, long long r0, long long c0) {
  return reinterpret_cast<float*>(f.bases[in.root[i]] + in.offset[i]) + r0 * in.ld[i] + c0;
}

// ---- the matrix product: CBLAS sgemm, row-major, C = op(A) op(B) (alpha 1, beta 0)
typedef void (*Sgemm64)(int, int, int, long long, long long, long long, float, const float*, long long,
                        const float*, long long, float, float*, long long);
typedef void (*Sgemm32)(int, int, int, int, int, int, float, const float*, int, const float*, int, float,
                        float*, int);
void* gemm_address = nullptr;
int gemm_int_bits = 0;

void gemm(bool ta, bool tb, long long M, long long N, long long K, const float* A, long long lda,
          const float* B, long long ldb, float* C, long long ldc) {
  const int ROW_MAJOR = 101, NO_TRANS = 111, TRANS = 112;
  if (gemm_int_bits == 64)
    reinterpret_cast<Sgemm64>(gemm_address)(ROW_MAJOR, ta ? TRANS : NO_TRANS, tb ? TRANS : NO_TRANS, M, N, K,
                                            1.0f, A, lda, B, ldb, 0.0f, C, ldc);
  else
    reinterpret_cast<Sgemm32>(gemm_address)(ROW_MAJOR, ta ? TRANS : NO_TRANS, tb ? TRANS : NO_TRANS, (int)M,
                                            (int)N, (int)K, 1.0f, A, (int)lda, B, (int)ldb, 0.0f, C, (int)ldc);
}

// ---- two helpers: h += b (a bias every row shares) and out = the sums of d's columns
void bias_add(float* h, const float* b, long long rows, long long cols, long long ld) {
  for (long long r = 0; r < rows; ++r) {
    float* row = h + r * ld;
#pragma omp simd
    for (long long j = 0; j < cols; ++j) row[j] += b[j];
  }
}

void column_sums(const float* d, float* out, long long rows, long long cols, long long ld) {
  for (long long j = 0; j < cols; ++j) out[j] = 0.0f;
  for (long long r = 0; r < rows; ++r) {   // row by row, as numpy.add.reduce(d, axis=0) adds them
    const float* row = d + r * ld;
#pragma omp simd
    for (long long j = 0; j < cols; ++j) out[j] += row[j];
  }
}

// ---- one thread's share of one instruction
void execute(const Frame& f, const Instruction& in, int t) {
  const int T = f.threads;
  long long r0 = 0, r1 = in.rows, c0 = 0, c1 = in.cols;
  if (in.split == SPLIT_rows) {
    r0 = in.rows * t / T;
    r1 = in.rows * (t + 1) / T;
  } else if (in.split == SPLIT_columns) {
    const long long blocks = (in.cols + 15) / 16;
    c0 = std::min(in.cols, blocks * t / T * 16);
    c1 = std::min(in.cols, blocks * (t + 1) / T * 16);
  } else if (t != 0) {
    r1 = r0;
  }
  double sum = 0.0;
  if (r1 > r0 && c1 > c0) {
    switch (in.op) {
      case OP_gemm: {   // operands A, B, C; n = (K, A transposed, B transposed)
        const bool ta = in.n[1] != 0, tb = in.n[2] != 0;
        const float* A = at(f, in, 0, 0, 0) + (ta ? r0 : r0 * in.ld[0]);
        const float* B = at(f, in, 1, 0, 0) + (tb ? c0 * in.ld[1] : c0);
        gemm(ta, tb, r1 - r0, c1 - c0, in.n[0], A, in.ld[0], B, in.ld[1], at(f, in, 2, r0, c0), in.ld[2]);
        break;
      }
      case OP_bias_add: bias_add(at(f, in, 0, r0, c0), at(f, in, 1, r0, c0), r1 - r0, c1 - c0, in.ld[0]); break;
      case OP_bias_tanh:
        bias_tanh_fast(at(f, in, 0, r0, c0), at(f, in, 1, r0, c0), r1 - r0, c1 - c0, in.ld[0]);
        break;
      case OP_reparameterize_kl:   // mu, logvar, eps, z; n = (L, NK)
        sum = reparameterize_kl_float(at(f, in, 0, r0, 0), at(f, in, 1, r0, 0), at(f, in, 2, r0, 0),
                                      at(f, in, 3, r0, 0), in.n[0], in.n[1], r1 - r0, in.cols, in.ld[0]);
        break;
      case OP_reparameterize_kl_backward:   // mu, logvar, dz, eps, dmu, dlogvar; n = (L, NK); s = (c)
        reparameterize_kl_backward_float(at(f, in, 0, r0, 0), at(f, in, 1, r0, 0), at(f, in, 2, r0, 0),
                                         at(f, in, 3, r0, 0), (float)f.scalars[in.s[0]], at(f, in, 4, r0, 0),
                                         at(f, in, 5, r0, 0), in.n[0], in.n[1], r1 - r0, in.cols, in.ld[0]);
        break;
      case OP_bernoulli:   // logits, x; s = (scale)
        sum = bernoulli_float(at(f, in, 0, r0, c0), at(f, in, 1, r0, c0), (float)f.scalars[in.s[0]], r1 - r0,
                              c1 - c0, in.ld[0], in.ld[1]);
        break;
      case OP_column_sums: column_sums(at(f, in, 0, r0, c0), at(f, in, 1, 0, c0), r1 - r0, c1 - c0, in.ld[0]); break;
GENERIC_CASES
      default: break;
    }
  }
  if (in.slot >= 0) f.sums[in.slot * T + t] = sum;
}

// ---- the threads: a sense-reversing spinning barrier, and a pool of workers that spin for a
// while after a program (the next step comes soon) and then sleep
class SpinBarrier {
 public:
  void reset(int count) { count_ = count; arrived_.store(0); phase_.store(0); }
  void wait(int& sense) {
    sense ^= 1;
    if (arrived_.fetch_add(1, std::memory_order_acq_rel) == count_ - 1) {
      arrived_.store(0, std::memory_order_relaxed);
      phase_.store(sense, std::memory_order_release);
      return;
    }
    for (long long spins = 0; phase_.load(std::memory_order_acquire) != sense; ++spins) {
      if (spins < 1000) relax(); else std::this_thread::yield();   // another thread has this core
    }
  }
 private:
  int count_ = 1;
  std::atomic<int> arrived_{0}, phase_{0};
};

void run_share(const Frame f, int t, SpinBarrier* barrier) {   // (a copy: the caller's may go first)
  int sense = 0;
  for (long long k = 0; k < f.count; ++k) {
    execute(f, f.code[k], t);
    if (barrier != nullptr) barrier->wait(sense);
  }
}

const auto SPIN_BEFORE_SLEEP = std::chrono::microseconds(SPIN_MICROSECONDS);

class Pool {
 public:
  void run(const Frame& frame) {
    std::lock_guard<std::mutex> one_program_at_a_time(running_);
    while (workers_ < frame.threads - 1) {   // started before the generation moves: they wait for it
      ++workers_;
      std::thread(&Pool::work, this, workers_, generation_.load()).detach();
    }
    barrier_.reset(frame.threads);
    frame_ = &frame;
    active_.store(frame.threads, std::memory_order_relaxed);
    {
      std::lock_guard<std::mutex> lock(mutex_);
      generation_.fetch_add(1, std::memory_order_release);
    }
    wake_.notify_all();
    run_share(frame, 0, &barrier_);
    // every worker has left the last barrier before the frame and the barrier are used again
    while (finished_.load(std::memory_order_acquire) != frame.threads - 1) relax();
    finished_.store(0, std::memory_order_relaxed);
  }

 private:
  void work(int index, long long seen) {
    for (;;) {
      long long g;
      auto start = std::chrono::steady_clock::now();
      for (int spins = 1; (g = generation_.load(std::memory_order_acquire)) == seen; ++spins) {
        if (spins % 256 == 0 && std::chrono::steady_clock::now() - start > SPIN_BEFORE_SLEEP) {
          std::unique_lock<std::mutex> lock(mutex_);
          wake_.wait(lock, [&] { return generation_.load(std::memory_order_acquire) != seen; });
        } else {
          relax();
        }
      }
      seen = g;
      if (index < active_.load(std::memory_order_relaxed)) {
        run_share(*frame_, index, &barrier_);
        finished_.fetch_add(1, std::memory_order_release);
      }
    }
  }

  std::mutex running_, mutex_;
  std::condition_variable wake_;
  std::atomic<long long> generation_{0};
  std::atomic<int> active_{1}, finished_{0};
  const Frame* frame_ = nullptr;
  SpinBarrier barrier_;
  int workers_ = 0;
};

Pool* pool() {   // one per process: a child made by fork() has none of its parent's threads
  static std::mutex lock;
  static Pool* current = nullptr;
  static pid_t owner = 0;
  std::lock_guard<std::mutex> guard(lock);
  if (current == nullptr || owner != getpid()) {
    current = new Pool();   // (a parent's pool, copied into a child, is left alone)
    owner = getpid();
  }
  return current;
}

}  // namespace

extern "C" void replay_set_gemm(void* address, int int_bits) {
  gemm_address = address;
  gemm_int_bits = int_bits;
}

// Runs the program on `threads` threads (the caller's and threads - 1 workers). 0: done; 1: refused.
extern "C" int replay_run(const Instruction* code, long long count, const long long* bases, const double* scalars,
                          double* sums, int threads) {
  if (gemm_address == nullptr || threads < 1 || threads > 64) return 1;
  const Frame frame{code, count, bases, scalars, sums, threads};
  if (threads == 1) run_share(frame, 0, nullptr);
  else pool()->run(frame);
  return 0;
}
"""

# How long a worker spins after a program before it sleeps: a training loop's next step usually
# comes within this, and then no thread has to be woken.
SPIN_MICROSECONDS = 500


def runtime_source():
    """The C++ of the program runtime (appended to the float32 library after its kernels)."""
    struct = "struct Instruction {\n" + "".join(
        f"  long long {name}{f'[{count}]' if count > 1 else ''};\n" for name, count in FIELDS.items()) + "};\n"
    struct += f"static_assert(sizeof(Instruction) == {WORDS} * sizeof(long long), \"one row of the table\");\n"
    enums = "enum : long long { " + ", ".join(f"OP_{name} = {i}" for i, name in enumerate(OPS)) + " };\n"
    enums += "enum : long long { " + ", ".join(f"SPLIT_{name} = {i}" for i, name in enumerate(SPLITS)) + " };\n"
    body = RUNTIME_SOURCE.replace("GENERIC_CASES", "\n".join(_generic_case(name) for name in GENERIC_OPS))
    body = body.replace("SPIN_MICROSECONDS", str(SPIN_MICROSECONDS))
    return struct + enums + body
