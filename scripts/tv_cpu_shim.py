"""Let the CUDA-linked torchvision wheel import beside torch+cpu.

No CPU build of torchvision is on PyPI; the wheel there needs CUDA for its C++ ops, and
``torchvision/_meta_registrations.py`` registers fake kernels for ``torchvision::nms``/``qnms``
without checking they exist. Defining the two op schemas before torchvision loads is enough:
the pure-Python transforms the Qwen-VL processors use then work. Installed as a ``.pth`` file so it
runs in every process (vLLM workers, Ray workers, DeepSpeed ranks). Costs nothing until torchvision
is imported.
"""

import importlib.abc
import sys

_done = False


def _define_ops() -> None:
    global _done
    if _done:
        return
    _done = True
    import torch

    try:
        _ = torch.ops.torchvision.nms  # real ops present: nothing to do
        return
    except (AttributeError, RuntimeError):
        pass
    lib = torch.library.Library("torchvision", "DEF")
    lib.define("nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
    lib.define("qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
    sys.modules[__name__]._lib = lib  # keep the library alive


class _Finder(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name == "torchvision":
            _define_ops()
        return None


sys.meta_path.insert(0, _Finder())
