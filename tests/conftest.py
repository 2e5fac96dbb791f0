import os

# Every test runs on the CPU accelerator; set before anything imports deepspeed.
os.environ.setdefault("DS_ACCELERATOR", "cpu")


def pytest_sessionfinish(session, exitstatus):
    from tests.distributed import close_all_pools

    close_all_pools()
