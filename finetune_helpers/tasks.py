"""The two standard tasks of Part II, with one data subset and one budget each.

Every strategy chapter trains on exactly these, so Part III can put the chapters' numbers side
by side. The budgets are small on purpose: each chapter must run in a few minutes on a 2-core
CPU, where Paddle runs EfficientNet-Lite0 at roughly 20 training images per second at 32 px
(its depthwise convolutions cost time per image and channel, almost regardless of image size)
and MiniLM at roughly 25 training sentences per second at 32 tokens. The numbers are therefore
small-data numbers: what each strategy does with a few hundred labelled examples.

Vision: ImageNet EfficientNet-Lite0 -> Fashion-MNIST (10 classes), images upscaled to
``image_size`` and repeated to 3 channels. Text: MiniLM (all-MiniLM-L6-v2) -> English tweet
sentiment (negative / neutral / positive).

Recipe shared by the chapters (found by measurement at these budgets, see the chapters):
AdamW at ``lr`` with the new head's parameter group at ``head_lr_multiplier`` times that rate
(Paddle's group ``learning_rate`` is a multiplier), and, for the CNN, every BatchNorm layer in
inference mode (``_use_global_stats = True``). With batch statistics at 32 px on 20 steps, the
running statistics never catch up and evaluation collapses; the freeze-the-bottom chapter
measures this.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Task:
    """One data set, one model and one training budget."""

    name: str
    model: str
    num_classes: int
    n_train: int
    n_eval: int
    epochs: int
    batch_size: int
    lr: float = 1e-4
    head_lr_multiplier: float = 10.0
    seed: int = 0
    image_size: int | None = None  # vision only
    max_length: int | None = None  # text only

    @property
    def budget(self) -> str:
        """The budget as one line, e.g. '320 images x 2 epochs (32 px), batch 32'."""
        unit = "images" if self.image_size else "texts"
        size = f"{self.image_size} px" if self.image_size else f"{self.max_length} tokens"
        return f"{self.n_train} {unit} x {self.epochs} epochs ({size}), batch {self.batch_size}"


VISION = Task(name="Fashion-MNIST", model="efficientnet_lite0", num_classes=10,
              n_train=320, n_eval=300, epochs=2, batch_size=32, lr=3e-4,
              image_size=32)
TEXT = Task(name="tweet sentiment", model="minilm_l6", num_classes=3,
            n_train=384, n_eval=300, epochs=2, batch_size=32, lr=5e-5,
            max_length=32)


def vision_datasets(task: Task = VISION) -> tuple[Any, Any]:
    """(train, eval) Fashion-MNIST subsets for ``task``: stratified, seeded, fixed."""
    from . import data
    train = data.fashion_mnist("train", n=task.n_train, image_size=task.image_size, seed=task.seed)
    held_out = data.fashion_mnist("test", n=task.n_eval, image_size=task.image_size, seed=task.seed)
    return train, held_out


def text_datasets(task: Task = TEXT) -> tuple[Any, Any]:
    """(train, validation) tweet subsets for ``task``: de-duplicated, stratified, seeded."""
    from . import data
    train = data.tweets("train", n=task.n_train, seed=task.seed)
    held_out = data.tweets("validation", n=task.n_eval, seed=task.seed)
    return train, held_out


def loaders(task: Task, tokenizer: Any = None) -> tuple[Any, Any]:
    """(train_loader, eval_loader) for ``task``; text tasks need the model's ``tokenizer``.

    The training loader reshuffles every epoch with a seeded order (the same on every run).
    """
    from . import data
    if task.image_size:
        train, held_out = vision_datasets(task)
        collate = None
    else:
        if tokenizer is None:
            raise ValueError(f"the {task.name} task needs the model's tokenizer: "
                             f"loaders(task, tokenizer=zoo.load_tokenizer({task.model!r}))")
        train, held_out = text_datasets(task)
        collate = data.TextCollate(tokenizer, task.max_length)
    return (data.make_loader(train, task.batch_size, shuffle=True, seed=task.seed, collate_fn=collate),
            data.make_loader(held_out, 2 * task.batch_size, shuffle=False, collate_fn=collate))
