"""Two models locked at once from two threads; the library works with the GIL released."""
import copy
import threading
import time

import torch

import corelocker
from nets import resnet


def test_two_models_locked_at_once():
    models = [resnet(seed=s, width=16, blocks=2) for s in (0, 1)]
    expected = []
    for m in models:  # what each lock gives when it runs alone
        k = corelocker.lock(copy.deepcopy(m))
        expected.append((k.original_fingerprint, k.locked_fingerprint))
    barrier = threading.Barrier(2)
    errors = []

    def work(i):
        m = models[i]
        try:
            for _ in range(4):
                barrier.wait(timeout=60)
                key = corelocker.lock(m)
                assert (key.original_fingerprint, key.locked_fingerprint) == expected[i]
                with corelocker.unlocked(m, key):
                    assert corelocker.fingerprint(m) == expected[i][0]
                key = corelocker.key_from_bytes(key.to_bytes())
                corelocker.unlock(m, key)
                assert corelocker.fingerprint(m) == expected[i][0]
        except BaseException as e:  # noqa: B902 - reported below
            errors.append(e)
            barrier.abort()

    threads = [threading.Thread(target=work, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors[0]


def test_the_gil_is_released_while_the_library_works():
    big = {f"w{i}": torch.full((1024, 1024), float(i)) for i in range(32)}  # 128 MiB to hash
    count = 0
    stop = threading.Event()

    def spin():
        nonlocal count
        while not stop.is_set():
            count += 1

    spinner = threading.Thread(target=spin)
    spinner.start()
    try:
        c0, t0 = count, time.perf_counter()
        time.sleep(0.1)
        rate = (count - c0) / (time.perf_counter() - t0)  # the spinner's pace on its own
        calls = 0
        c0, t0 = count, time.perf_counter()
        while time.perf_counter() - t0 < 0.3:
            corelocker.fingerprint(big)
            calls += 1
        elapsed = time.perf_counter() - t0
        during = count - c0
    finally:
        stop.set()
        spinner.join()
    # Holding the GIL, the library would let the spinner run only between calls (a few 5 ms
    # switch intervals); released, it runs all along.
    assert during > 0.25 * rate * elapsed, (during, rate, elapsed, calls)
