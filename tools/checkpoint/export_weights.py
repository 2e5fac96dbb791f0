"""Export a checkpoint of any layout (TP/PP/DP/ZeRO) as one safetensors file of whole fp32 weights.

    python tools/checkpoint/export_weights.py --checkpoint runs/ckpt [--output weights.safetensors]

--checkpoint is a --save folder (its `latest` checkpoint is used) or one global_stepN folder. Tensors carry
the plain model's parameter names (embedding.word_embeddings.weight, layers.0.self_attention...), TP shards
merged and the vocabulary padding removed; the run's configuration is stored in the file's metadata
(key "megatron_ds_config", JSON). The universal conversion this needs is cached next to the checkpoint.
"""

import argparse
import json
import os
import sys

# Run as a script from a checkout: make the repository root importable without installing the package.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", required=True, help="a --save folder or a global_stepN folder")
    parser.add_argument("--output", default=None, help="output file (default: <checkpoint>/../<tag>.safetensors)")
    return parser.parse_args(argv)


def main(argv=None) -> str:
    args = parse_args(argv)
    from safetensors.torch import save_file

    from megatron.checkpointing.consolidate import consolidated_weights, resolve_checkpoint_folder

    folder = resolve_checkpoint_folder(args.checkpoint)
    weights, manifest = consolidated_weights(folder)
    output = args.output or folder.rstrip(os.sep) + ".safetensors"
    metadata = {"format": "pt", "megatron_ds_config": json.dumps(manifest.get("config")),
                "iteration": str(manifest["iteration"])}
    save_file(weights, output, metadata=metadata)
    print(f"> wrote {len(weights)} tensors ({sum(t.numel() for t in weights.values())} parameters) to {output}")
    return output


if __name__ == "__main__":
    main()
