"""DeepSpeed copies ``zero_to_fp32.py`` and ``zero_to_torch.py`` into the save folder at every ZeRO save; both unpickle the
shards with code execution (``torch.load(weights_only=False)``), so a habit of running them on a downloaded
checkpoint is a way to run its author's code. Each save replaces them, before the manifest is written, with
one safe script of the same name that consolidates through megatron-ds (universal conversion and
weights-only loading, consolidate.py) and writes a safetensors file.
"""

import os

DEEPSPEED_SCRIPTS = ("zero_to_fp32.py", "zero_to_torch.py")
SAFE_SCRIPT_NAME = "zero_to_fp32.py"

SAFE_SCRIPT = '''"""Whole fp32 weights of this folder's `latest` checkpoint as one safetensors file, read without unpickling code.

Written by megatron-ds in place of DeepSpeed's zero_to_fp32.py (which loads pickles with code execution).

    python zero_to_fp32.py [OUTPUT.safetensors]      (needs megatron-ds importable; default
                                                      <this folder>/<latest tag>.safetensors)
"""

import os
import sys

from safetensors.torch import save_file

from megatron.checkpointing.consolidate import consolidated_weights

folder = os.path.dirname(os.path.abspath(__file__))
weights, manifest = consolidated_weights(folder)
output = sys.argv[1] if len(sys.argv) > 1 else os.path.join(folder, f"global_step{manifest['iteration']}.safetensors")
save_file(weights, output, metadata={"format": "pt", "iteration": str(manifest["iteration"])})
print(f"> wrote {len(weights)} tensors to {output}")
'''


def replace_recovery_scripts(folder: str):
    """Remove DeepSpeed's scripts from a save folder and put the safe one there."""
    found = False
    for name in DEEPSPEED_SCRIPTS:
        path = os.path.join(folder, name)
        if os.path.exists(path):
            os.remove(path)
            found = True
    if found:
        with open(os.path.join(folder, SAFE_SCRIPT_NAME), "w") as handle:
            handle.write(SAFE_SCRIPT)
