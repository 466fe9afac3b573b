"Shared timing helper for the benchmark scripts."
import statistics
import time


def median_time(f, n: int = 15) -> float:
    "Median wall time of `f()` over `n` calls, after one warm-up call."
    f()
    ts = []
    for _ in range(n):
        t = time.perf_counter(); f(); ts.append(time.perf_counter() - t)
    return statistics.median(ts)
