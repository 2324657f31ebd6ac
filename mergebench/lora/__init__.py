"""The ``lora`` commands, built on the core (the core never imports this package).

Layout:
    merge.py    ``lora merge``: base + adapters → a normal model directory (Copy ops of folded tensors,
                published like any merge)
    concat.py   ``lora concat``: one adapter whose update is the weighted sum (optionally SVD-compressed)
    extract.py  ``lora extract``: finetune − base → adapter by truncated SVD
    save.py     write an adapter directory atomically
    cli.py      the ``lora`` click group

Reading PEFT adapters (``io/adapter.py``) and folding them into base tensors (``fold.py``) are core
modules, because ``base+adapter`` model strings are merge inputs.
"""
