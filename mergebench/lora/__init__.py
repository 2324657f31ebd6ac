"""LoRA adapters in PEFT's file format: fold into a base, concatenate ranks, use as merge inputs, extract.

Layout:
    adapter.py  read an adapter dir (config math, key names, rank/alpha patterns) — headers only
    bind.py     map an adapter's modules onto a base checkpoint's tensors (the one place), validate,
                and apply updates to one base tensor at a time
    merge.py    ``lora merge``: base + adapters → a normal model directory, streamed
    adapted.py  ``base+adapter`` model strings: a Checkpoint whose ``read`` returns W + ΔW
    concat.py   ``lora concat``: one adapter whose update is the weighted sum (optionally SVD-compressed)
    extract.py  ``lora extract``: finetune − base → adapter by truncated SVD
    save.py     write an adapter dir atomically
    cli.py      the ``lora`` click group
"""
