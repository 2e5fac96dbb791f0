"""Exit codes of pretrain_gpt_ds.py, distinct so that a scheduler or a wrapper script can act on them.

    0   training finished (or stopped by --exit-interval / --exit-duration-in-mins, after saving)
    1   an error: configuration, data, checkpoint, a crashed rank
    3   training diverged (non-finite loss or grad norm); nothing non-finite was saved, resume from `latest`
        with a lower --lr
    4   a collective timed out (--distributed-timeout-minutes); the message names the ranks that stopped
    75  stopped early by SIGTERM/SIGINT, --kill-switch-file or the launcher's death, after saving: requeue the
        job with --load (75 is EX_TEMPFAIL of sysexits.h, "try again later")

Launchers pass a rank's code on: the `deepspeed` launcher and torchrun exit with the first failing rank's
code; the `deepspeed` launcher itself exits 1 when it is the one that received the signal.
"""

EXIT_OK = 0
EXIT_ERROR = 1
EXIT_DIVERGED = 3
EXIT_HUNG = 4
EXIT_STOPPED = 75
