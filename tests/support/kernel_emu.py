"""A CPU emulator of the CUDA kernels, so that their logic is tested on
machines without a GPU.

The ``.cu`` sources are compiled as plain C++ (g++) after a small header that
maps the CUDA built-ins to host code: every kernel runs as one block of one
thread, which the grid-stride loops of kernels/common.cuh make a complete
launch; block reductions reduce over one thread; atomics are plain updates;
``__fmul_rn`` and friends are plain float operations (compiled with
``-ffp-contract=off``, so none is fused). Each kernel name expression of
``segvol_rt.kernels.NAME_EXPRESSIONS`` gets an ``extern "C"`` wrapper that
unpacks an argument array, and a signature function that the Python side
checks every call against (pointer or scalar, kind, size, pointee dtype), so a
wrong argument dtype - the classic RawKernel bug - fails here too.

:func:`backend` returns a ``segvol_rt.ops.cuda`` device backend that runs the
GPU code path on numpy arrays with these emulated kernels.

Subnormals: CuPy appends ``-ftz=true`` to every NVRTC compile, so on the GPU
float32 subnormal inputs and results of the kernels are flushed to zero. The
emulator does the same by default (x86 MXCSR DAZ+FTZ around each call;
``ftz=False`` keeps them, as the NumPy twins do).

What this cannot show: races between threads, launch configurations, shared
memory sizes, NVRTC-specific compile errors and float behaviour of the GPU's
own ``expf``; tests/kernels/test_kernels_compile.py and the GPU tests cover
the compile, benchmarks/device_check.py the rest.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import shutil
import subprocess
import tempfile
from pathlib import Path

import numpy as np

from segvol_rt import kernels as K

HEADER = r"""
#include <cmath>
#include <cstring>
#include <cstddef>
#include <type_traits>
#include <utility>

struct emu_dim3 { unsigned int x, y, z; };
static const emu_dim3 threadIdx = {0, 0, 0};
static const emu_dim3 blockIdx = {0, 0, 0};
static const emu_dim3 blockDim = {1, 1, 1};
static const emu_dim3 gridDim = {1, 1, 1};

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __shared__ static
#define __restrict__ __restrict

inline void __syncthreads() {}
inline float __fmul_rn(float a, float b) { return a * b; }
inline float __fadd_rn(float a, float b) { return a + b; }
inline float __fsub_rn(float a, float b) { return a - b; }
inline float __fdiv_rn(float a, float b) { return a / b; }
inline float __fmaf_rn(float a, float b, float c) { return std::fma(a, b, c); }
inline float __double2float_rn(double d) { return (float)d; }
inline unsigned int __float_as_uint(float f) { unsigned int u; std::memcpy(&u, &f, 4); return u; }
inline float __uint_as_float(unsigned int u) { float f; std::memcpy(&f, &u, 4); return f; }

inline int min(int a, int b) { return a < b ? a : b; }
inline int max(int a, int b) { return a > b ? a : b; }
inline unsigned int min(unsigned int a, unsigned int b) { return a < b ? a : b; }
inline unsigned int max(unsigned int a, unsigned int b) { return a > b ? a : b; }

template <typename T> inline T atomicMin(T* p, T v) { T o = *p; if (v < o) *p = v; return o; }
template <typename T> inline T atomicMax(T* p, T v) { T o = *p; if (v > o) *p = v; return o; }
template <typename T> inline T atomicAdd(T* p, T v) { T o = *p; *p = o + v; return o; }

template <typename A> constexpr int emu_code() {
    using B = typename std::remove_cv<typename std::remove_pointer<A>::type>::type;
    int kind = std::is_same<B, bool>::value ? 4
             : std::is_floating_point<B>::value ? 1
             : std::is_signed<B>::value ? 2 : 3;
    return (std::is_pointer<A>::value ? 1000 : 0) + kind * 100 + (int)sizeof(B);
}

template <typename... A, std::size_t... I>
void emu_call_impl(void (*f)(A...), void** args, std::index_sequence<I...>) {
    f(*static_cast<typename std::remove_cv<A>::type*>(args[I])...);
}
// CuPy compiles every kernel with -ftz=true (appended after our options):
// float32 subnormal inputs and results are flushed to (sign-preserving) zero
// on the GPU. MXCSR's DAZ (bit 6) and FTZ (bit 15) do the same on the host,
// for the duration of one kernel call (numpy keeps its own mode).
#if defined(__x86_64__) || defined(__i386__)
#include <xmmintrin.h>
struct emu_fp_mode {
    unsigned int saved;
    explicit emu_fp_mode(int ftz) : saved(_mm_getcsr()) { _mm_setcsr(ftz ? (saved | 0x8040u) : (saved & ~0x8040u)); }
    ~emu_fp_mode() { _mm_setcsr(saved); }
};
extern "C" int emu_ftz_supported() { return 1; }
#else
struct emu_fp_mode { explicit emu_fp_mode(int) {} };
extern "C" int emu_ftz_supported() { return 0; }
#endif

template <typename... A> void emu_call(void (*f)(A...), void** args, int ftz) {
    emu_fp_mode mode(ftz);
    emu_call_impl(f, args, std::index_sequence_for<A...>{});
}
template <typename... A> int emu_sig(void (*)(A...), int* codes) {
    int c[] = {emu_code<A>()..., 0};
    for (std::size_t i = 0; i < sizeof...(A); ++i) codes[i] = c[i];
    return (int)sizeof...(A);
}
"""

_KIND = {"f": 1, "i": 2, "u": 3, "b": 4}


def _code(dtype: np.dtype, pointer: bool) -> int:
    return (1000 if pointer else 0) + _KIND[dtype.kind] * 100 + dtype.itemsize


def _source() -> str:
    parts = [HEADER, K.source_text(K.COMMON)]
    index = 0
    wrappers = []
    for file, names in K.NAME_EXPRESSIONS.items():
        parts.append(f'#line 1 "{file}"\n' + K.source_text(file))
        for name in names:
            wrappers.append(
                f'extern "C" void emu_k{index}(void** a, int ftz) {{ emu_call(&{name}, a, ftz); }}\n'
                f'extern "C" int emu_k{index}_sig(int* c) {{ return emu_sig(&{name}, c); }}\n'
            )
            index += 1
    return "\n".join(parts) + "\n" + "".join(wrappers)


def available() -> bool:
    """True when a C++ compiler is on PATH."""
    return shutil.which("g++") is not None


@functools.cache
def library() -> ctypes.CDLL:
    """The emulator, built once per source version into the temp directory."""
    source = _source()
    digest = hashlib.sha256(source.encode()).hexdigest()[:16]
    out = Path(tempfile.gettempdir()) / f"segvol_rt_kernel_emu_{digest}.so"
    if not out.exists():
        with tempfile.TemporaryDirectory() as tmp:
            src = Path(tmp) / "emu.cpp"
            src.write_text(source)
            built = Path(tmp) / "emu.so"
            cmd = ["g++", "-std=c++17", "-O1", "-ffp-contract=off", "-fno-fast-math",
                   "-shared", "-fPIC", "-o", str(built), str(src)]
            run = subprocess.run(cmd, capture_output=True, text=True)
            if run.returncode != 0:
                raise RuntimeError(f"emulator build failed:\n{run.stderr[-4000:]}")
            shutil.move(str(built), out)
    return ctypes.CDLL(str(out))


def _index() -> dict[str, int]:
    names = [n for names in K.NAME_EXPRESSIONS.values() for n in names]
    return {n: i for i, n in enumerate(names)}


class Kernel:
    """One emulated kernel, called like a ``cupy.RawKernel``."""

    def __init__(self, name: str, ftz: bool = True):
        lib = library()
        i = _index()[name]
        self.name = name
        self.ftz = ftz
        self._fn = getattr(lib, f"emu_k{i}")
        self._fn.argtypes = [ctypes.POINTER(ctypes.c_void_p), ctypes.c_int]
        codes = (ctypes.c_int * 64)()
        count = getattr(lib, f"emu_k{i}_sig")(codes)
        self.signature = list(codes[:count])

    def __call__(self, grid, block, args, shared_mem: int = 0) -> None:
        if len(args) != len(self.signature):
            raise TypeError(f"{self.name}: {len(args)} arguments, kernel takes {len(self.signature)}")
        keep = []
        for pos, (arg, want) in enumerate(zip(args, self.signature)):
            if isinstance(arg, np.ndarray):
                got = _code(arg.dtype, pointer=True)
                holder = ctypes.c_void_p(arg.ctypes.data)
            elif isinstance(arg, np.generic):
                got = _code(arg.dtype, pointer=False)
                holder = ctypes.create_string_buffer(arg.tobytes(), arg.dtype.itemsize)
            else:
                raise TypeError(f"{self.name} argument {pos}: {type(arg).__name__} is not a numpy array or scalar")
            if got != want:
                raise TypeError(f"{self.name} argument {pos}: passed code {got}, kernel expects {want}")
            keep.append(holder)
        ptrs = (ctypes.c_void_p * max(1, len(keep)))(*[ctypes.cast(ctypes.pointer(h), ctypes.c_void_p) for h in keep])
        self._fn(ptrs, int(self.ftz))


def ftz_supported() -> bool:
    """Whether the emulator can flush subnormals as the GPU does (x86: MXCSR)."""
    return bool(library().emu_ftz_supported())


@functools.cache
def kernel(name: str, ftz: bool = True) -> Kernel:
    """The emulated kernel ``name``; ``ftz``: flush float32 subnormals as CuPy's
    ``-ftz=true`` compile does on the GPU (default), or keep them (IEEE, as numpy)."""
    return Kernel(name, ftz)


def backend(poison: bool = True, ftz: bool = True):
    """A gpu_ops device backend: numpy arrays, emulated kernels (``ftz``: see
    :func:`kernel`); fresh outputs are poisoned (NaN / 0xAB bytes) so
    unwritten elements show."""
    from segvol_rt.ops import cuda as gpu_ops

    return gpu_ops.Device(xp=np, kernel=functools.partial(kernel, ftz=ftz), to_host=np.asarray, poison=poison)
