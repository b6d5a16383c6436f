"""Helpers for the book *Fine-tuning pretrained models with PaddlePaddle*.

Importing this package is cheap on purpose: it imports neither paddle nor paddlenlp, so
``finetune_helpers.runtime.setup()`` can configure the math library before paddle loads.
Import the submodules you need (``from finetune_helpers import zoo, data, strategies``).
"""

__version__ = "0.1.0"
