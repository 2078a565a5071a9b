"""What every compiled kernel runs on: the threads that share out its rows, their meetings inside
one call, BLAS held to one thread per product, and a line said when a kernel compiles.

The compiled kernels (integer/kernels.py, and the calibration's objective in
codec/calibration_objective.py) do their rows (windows, slots, pixels, planes) independently:
`share_rows` shares them among coding's --threads threads, each running the whole computation on
its share, so that shares run at once and give the integers of one thread. The decoder's loop is the
one kernel whose shares wait for each other, at each step's two meetings (`meet`).
"""

from __future__ import annotations

import atexit
import functools
import os
import shutil
import sys
import tempfile
import threading
from contextlib import contextmanager
from pathlib import Path
from typing import Callable

import numba
from llvmlite import ir
from numba.core import cgutils, types
from numba.core import event as numba_events
from numba.extending import intrinsic
from numba.misc.appdirs import AppDirs

from .. import threads as _threads_setting
from ..errors import SnailError
from ..fileio import check_directory


def _writable(directory: Path) -> bool:
    """Whether files can be made in `directory` (fileio.check_directory's probe, which leaves nothing
    behind), as numba needs of a cache's place."""
    try:
        check_directory(directory)
        return True
    except SnailError:
        return False


def keep_kernels_somewhere(package_caches: list[Path], user_cache: Path) -> str | None:
    """Numba keeps each compiled kernel (cache=True) in its module's __pycache__, else in the user's
    cache (~/.cache/numba), and raises at import where it can write neither (a read-only install
    run with no writable home). There the kernels are kept in a temporary directory instead: every
    process compiles them again (slow) rather than fail. Returns that directory, or None where a
    cache can be kept (or NUMBA_CACHE_DIR names one)."""
    if numba.config.CACHE_DIR or all(_writable(path) for path in package_caches) or _writable(user_cache):
        return None
    directory = tempfile.mkdtemp(prefix="snailcompress-kernels-")
    atexit.register(shutil.rmtree, directory, ignore_errors=True)
    numba.config.CACHE_DIR = directory
    return directory


_PACKAGE_DIR = Path(__file__).resolve().parents[1]
#: where this process keeps the kernels if nowhere lasting (keep_kernels_somewhere), else None
temporary_kernel_cache = keep_kernels_somewhere(
    [_PACKAGE_DIR / "integer" / "__pycache__", _PACKAGE_DIR / "codec" / "__pycache__"],
    Path(AppDirs(appname="numba", appauthor=False).user_cache_dir))

# Numba compiles each kernel at its first call after installing (some seconds) and caches it
# beside the package (or in ~/.cache/numba): later processes load it in a fraction of a second. So
# that a command that compiles says why it is silent rather than seem to hang, the first
# compilation in a process of the decoder's kernels, and that of the encoder's, each call
# `compile_notice("decoding")` or `compile_notice("encoding")` where it is set (the CLI sets it
# unless -q). Numba's "numba:compile" event fires on a cache miss only, never on a load, and under
# numba's global compiler lock, so the listener's state needs no lock of its own.

compile_notice: Callable[[str], None] | None = None
_PACKAGE = __name__.split(".")[0] + "."
_DECODING_KERNELS = ("_decode_steps", "_step_slots", "_decode_rows")  # what a decode compiles first; any other entry is the encoder's


class _CompileNotice(numba_events.Listener):
    def __init__(self):
        self.depth = 0  # compilations under way: a kernel compiles the functions it calls inside its own
        self.noticed: set[str] = set()

    def on_start(self, event):
        self.depth += 1
        if self.depth > 1 or compile_notice is None:
            return
        function = event.data["dispatcher"].py_func
        if not function.__module__.startswith(_PACKAGE):  # another library's compilation
            return
        work = "decoding" if function.__name__ in _DECODING_KERNELS else "encoding"
        if work not in self.noticed:
            self.noticed.add(work)
            try:
                compile_notice(work)
            except Exception:  # a notice that cannot be given (stderr closed, say) must not fail the compilation
                pass

    def on_end(self, event):
        self.depth -= 1


_compile_listener = _CompileNotice()
numba_events.register("numba:compile", _compile_listener)



def share_rows(kernel, rows: int, *args, abandon: Callable[[], None] | None = None) -> None:
    """Run `kernel(first, step, *args)`, which does share `first` of `step` of `rows` (rows first,
    first + step, ..., or a run of them), on coding's number of threads (--threads,
    snailcompress/threads.py), at most one a row: this thread takes share 0, the workers
    (`_Workers`) the others. A row is a kernel's unit of work: a slot, a window, a plane (with its
    own stream), or a block of pixels where one pixel is too little for a hand-over (tens of
    microseconds or more) and interleaved pixels would write each other's cache lines. Interleaved slots
    share the work evenly (slots at later positions attend longer). The kernels are compiled without
    the GIL and rows are independent, so shares run at once and give the integers of one thread.
    (numba's own parallel loops were tried: their OpenMP layer resets torch's thread count, and a
    loop that calls BLAS cannot be cached: it compiled in every run.) `abandon`, for a kernel whose
    shares wait for each other (`meet`): called where a share raises in Python, never having run or
    finished its compiled call, so that the others stop waiting for it."""
    threads = min(_threads or _threads_setting.threads(), rows)
    if threads <= 1:
        kernel(0, 1, *args)
        return
    _workers(threads - 1).run(kernel, threads, args, abandon)


class _Workers:
    """Threads that each run one share of a kernel call, woken by a signal of their own: a hand-over
    is cheaper than a ThreadPoolExecutor's (no queue, no future), which matters to kernels called
    at every step of a decoder (the torch path's searches). The signals are plain locks held until
    signalled: a lock may be released by another thread, and its acquire and release are C, where
    threading.Semaphore runs Python code around a condition. One caller at a time: a second, on
    another thread, runs all the rows itself rather than wait."""

    def __init__(self, count: int):
        self.pid = os.getpid()  # a forked child has none of these threads: it makes its own
        self.lock = threading.Lock()
        self.jobs: list = [None] * count
        self.errors: list = [None] * count
        self.go = [_signal() for _ in range(count)]
        self.done = [_signal() for _ in range(count)]
        for worker in range(count):
            threading.Thread(target=self._serve, args=(worker,), name=f"snailcompress-kernels-{worker}", daemon=True).start()

    def _serve(self, worker: int) -> None:
        while True:
            self.go[worker].acquire()
            if self.jobs[worker] is None:  # closed
                return
            kernel, args, abandon = self.jobs[worker]
            try:
                kernel(*args)
            except BaseException as error:  # handed back to the caller, which raises it
                if abandon is not None:
                    abandon()
                self.errors[worker] = error
            self.done[worker].release()

    def run(self, kernel, threads: int, args: tuple, abandon: Callable[[], None] | None = None) -> None:
        """kernel(first, threads, *args) for first = 0 (this thread), 1, ..., threads - 1 (workers);
        abandon() where a share raises (see share_rows)."""
        if not self.lock.acquire(blocking=False):
            kernel(0, 1, *args)
            return
        try:
            for worker in range(threads - 1):
                self.jobs[worker] = (kernel, (worker + 1, threads, *args), abandon)
                self.go[worker].release()
            try:
                kernel(0, threads, *args)
            except BaseException:
                if abandon is not None:
                    abandon()
                raise
            finally:
                for worker in range(threads - 1):
                    self.done[worker].acquire()
                    self.jobs[worker] = None
            errors = [error for error in self.errors[: threads - 1] if error is not None]
            self.errors[: threads - 1] = [None] * (threads - 1)
            if errors:
                raise errors[0]
        finally:
            self.lock.release()

    def close(self) -> None:
        """End the workers (once no call is running)."""
        with self.lock:
            for worker in range(len(self.jobs)):
                self.jobs[worker] = None
                self.go[worker].release()


def _signal() -> threading.Lock:
    """A one-shot signal: acquire() waits until another thread has called release()."""
    signal = threading.Lock()
    signal.acquire()
    return signal


_worker_pool: _Workers | None = None


def _workers(count: int) -> _Workers:
    """At least `count` workers, started once per process (a larger count replaces them)."""
    global _worker_pool
    if _worker_pool is None or _worker_pool.pid != os.getpid():
        _worker_pool = _Workers(count)
    elif len(_worker_pool.jobs) < count:
        _worker_pool.close()
        _worker_pool = _Workers(count)
    return _worker_pool


# A kernel whose threads must wait for each other inside one call (the decoder's loop: each step's
# search reads every slot's outputs, the next step every value) meets at `meet`: a counter every
# thread adds to, read until all have; C11 atomics (LLVM's acquire and release, right on ARM as on
# x86), so a thread's writes before it arrives are seen by every thread after it leaves. The waiting
# thread spins, then gives its core up (sched_yield) at each look, so more threads than cores only
# slows it. Two threads meet in a fraction of a microsecond, where waking a sleeping thread and
# handing it the GIL (`_Workers`) takes tens of microseconds, which the decoder would pay at every step.

_YIELD = "SwitchToThread" if sys.platform == "win32" else "sched_yield"
_SPINS_BEFORE_YIELD = 4096


def _link_yield() -> None:
    """Tell LLVM where the C library's yield is, so that compiled and cached code calling it by name
    links on every system (where LLVM would not find it among the process's libraries itself)."""
    import ctypes

    from llvmlite import binding

    library = ctypes.WinDLL("kernel32") if sys.platform == "win32" else ctypes.CDLL(None)
    binding.add_symbol(_YIELD, ctypes.cast(getattr(library, _YIELD), ctypes.c_void_p).value)


_link_yield()


@intrinsic
def _load_acquire(typingctx, array, index):  # pragma: no cover (compiled)
    """array[index] (int64), read with acquire ordering."""
    def codegen(context, builder, signature, args):
        pointer = cgutils.get_item_pointer(context, builder, signature.args[0],
                                           context.make_array(signature.args[0])(context, builder, args[0]), [args[1]])
        return builder.load_atomic(pointer, "acquire", 8)
    return types.int64(array, index), codegen


@intrinsic
def _fetch_add(typingctx, array, index, value):  # pragma: no cover (compiled)
    """array[index] += value (int64) atomically, with acquire and release ordering; the value before."""
    def codegen(context, builder, signature, args):
        pointer = cgutils.get_item_pointer(context, builder, signature.args[0],
                                           context.make_array(signature.args[0])(context, builder, args[0]), [args[1]])
        return builder.atomic_rmw("add", pointer, args[2], "acq_rel")
    return types.int64(array, index, types.int64), codegen


@intrinsic
def _yield_core(typingctx):  # pragma: no cover (compiled)
    """Let another thread run on this core (the C library's sched_yield, Windows' SwitchToThread)."""
    def codegen(context, builder, signature, args):
        builder.call(cgutils.get_or_insert_function(builder.module, ir.FunctionType(ir.IntType(32), []), _YIELD), [])
        return context.get_dummy_value()
    return types.void(), codegen


@numba.njit(cache=True, nogil=True)
def meet(meeting, threads, met):  # pragma: no cover (compiled)
    """Wait until all `threads` threads have come to their meeting number `met` (0, 1, ... in each
    thread) on `meeting` (int64: arrivals, and whether a thread has given up). False if one has: it
    will not come, so the others stop too."""
    _fetch_add(meeting, 0, 1)
    spins = 0
    while _load_acquire(meeting, 0) < threads * (met + 1):
        if _load_acquire(meeting, 1):
            return False
        spins += 1
        if spins > _SPINS_BEFORE_YIELD:
            _yield_core()
    return True


@numba.njit(cache=True, nogil=True)
def give_up(meeting):  # pragma: no cover (compiled)
    """Tell the threads meeting on `meeting` that this one will not come: their `meet` returns False."""
    _fetch_add(meeting, 1, 1)


_threads = 0  # the kernels' threads while a decoder holds them (take_threads), else coding's


@contextmanager
def take_threads():
    """For a decoding loop: the kernels run on coding's number of threads and torch on one: its
    OpenMP threads, spinning after each of its operations, would take the cores the kernels' threads
    need. Torch not imported yet starts on one (OMP_NUM_THREADS) if something imports it meanwhile,
    and gets coding's number after. Inside a holder, the holder's count stands."""
    global _threads
    if _threads:
        yield
        return
    count = _threads_setting.threads()
    torch, environment = sys.modules.get("torch"), os.environ.get("OMP_NUM_THREADS")
    restore = torch.get_num_threads() if torch is not None else count
    _threads = count
    if torch is not None:
        torch.set_num_threads(1)
    else:
        os.environ["OMP_NUM_THREADS"] = "1"
    try:
        yield
    finally:
        _threads = 0
        if environment is None:
            os.environ.pop("OMP_NUM_THREADS", None)
        else:
            os.environ["OMP_NUM_THREADS"] = environment
        torch = sys.modules.get("torch")
        if torch is not None:
            torch.set_num_threads(restore)


@functools.lru_cache(maxsize=None)
def one_thread_per_product() -> None:
    """The kernels' matrix products call SciPy's BLAS (numba's np.dot), whose own threads would
    spin on every core beside ours: threads come from splitting the rows (`share_rows`), so that BLAS
    runs each product on one. Only SciPy's BLAS is limited, not numpy's or torch's."""
    import scipy
    import scipy.linalg.cython_blas  # noqa: F401  (loads the BLAS that numba calls)
    from threadpoolctl import ThreadpoolController

    controller = ThreadpoolController()
    home = Path(scipy.__file__).parent
    mine = [lib for lib in controller.info() if Path(lib["filepath"]).parent.name in (home.name, home.name + ".libs")
            or Path(lib["filepath"]).is_relative_to(home)]
    if mine:
        controller.select(filepath=[lib["filepath"] for lib in mine]).limit(limits=1)

