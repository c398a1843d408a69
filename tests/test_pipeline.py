import threading
import time

import pytest

from softtargets.pipeline import BackgroundWorker, prefetch


def test_prefetch_keeps_order_and_runs_ahead_in_a_thread():
    seen_threads = set()

    def items():
        for i in range(20):
            seen_threads.add(threading.current_thread().name)
            yield i

    assert list(prefetch(items(), depth=3, name="pf")) == list(range(20))
    assert seen_threads == {"pf"}
    assert list(prefetch(iter(range(5)), depth=0)) == list(range(5))


def test_prefetch_reraises_the_producers_error():
    def items():
        yield 1
        raise ValueError("chunk 7 is damaged")

    it = prefetch(items(), depth=2)
    assert next(it) == 1
    with pytest.raises(ValueError, match="chunk 7 is damaged"):
        next(it)


def test_prefetch_stops_its_thread_when_closed_early():
    def endless():
        i = 0
        while True:
            yield i
            i += 1

    it = prefetch(endless(), depth=2, name="endless")
    assert next(it) == 0
    it.close()
    assert not any(t.name == "endless" for t in threading.enumerate())


def test_background_worker_processes_in_order_with_a_bounded_queue():
    done = []
    worker = BackgroundWorker(lambda x: (time.sleep(0.001), done.append(x)), depth=2)
    for i in range(10):
        worker.submit(i)
        assert i - len(done) <= 4  # queue (2) + the one in progress + the one being submitted
    worker.close()
    assert done == list(range(10))


def test_background_worker_error_reaches_the_caller_and_stops_processing():
    done = []

    def fn(x):
        if x == 2:
            raise OSError("disk full")
        done.append(x)

    worker = BackgroundWorker(fn, depth=1)
    with pytest.raises(OSError, match="disk full"):
        for i in range(50):
            worker.submit(i)
        worker.close()
    assert done == [0, 1]
