"""A stand-in launcher for the example recipes: records the command line instead of starting ranks.

    LAUNCHER="python tests/migration/capture_argv.py" CAPTURE_FILE=out.json bash examples_deepspeed/X.sh
writes ["pretrain_gpt_ds.py", "--flag", ...] to out.json.
"""

import json
import os
import sys

if __name__ == "__main__":
    with open(os.environ["CAPTURE_FILE"], "w") as handle:
        json.dump(sys.argv[1:], handle)
