"""jaxconv.hostmem: the command line keeps freed memory in the process (glibc), so a big buffer freed by
one step and allocated again by the next is not page-faulted in afresh; a user's malloc settings win."""

import os
import subprocess
import sys
import textwrap

# Allocates, touches and frees a 96 MB buffer from a worker thread, as XLA:CPU's executions do, then
# counts the page faults of doing it again.
FAULTS_OF_A_SECOND_BUFFER = textwrap.dedent("""
    import ctypes, resource, sys, threading
    from jaxconv import hostmem
    applied = hostmem.keep_freed_memory() if sys.argv[1] == "keep" else False
    libc = ctypes.CDLL(None)
    libc.malloc.restype, libc.malloc.argtypes = ctypes.c_void_p, (ctypes.c_size_t,)
    libc.free.argtypes = (ctypes.c_void_p,)

    def step():  # plain malloc, as XLA's (numpy would ask for huge pages)
        buffer = libc.malloc(96 << 20)
        ctypes.memset(buffer, 1, 96 << 20)
        libc.free(buffer)

    def in_a_thread():
        worker = threading.Thread(target=step)
        worker.start()
        worker.join()

    in_a_thread()
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    in_a_thread()
    print(applied, resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
""")

def faults(mode: str, **env) -> tuple[str, int]:
    environment = {k: v for k, v in os.environ.items() if k not in ("GLIBC_TUNABLES", "LD_PRELOAD")} | env
    done = subprocess.run([sys.executable, "-c", FAULTS_OF_A_SECOND_BUFFER, mode], capture_output=True, text=True,
                          env=environment, timeout=120)
    assert done.returncode == 0 and not done.stderr, done.stderr
    applied, count = done.stdout.split()
    return applied, int(count)


def test_a_freed_buffer_is_reused_without_page_faults():
    applied, count = faults("keep")
    assert applied == "True" and count < 2_000  # the pages stayed in the process
    assert faults("default")[1] > 20_000  # glibc's default: 96 MB of new pages (24,576 of 4 KB) every time


def test_a_users_malloc_settings_are_kept():
    applied, count = faults("keep", MALLOC_ARENA_MAX="4")
    assert applied == "False" and count > 20_000
