"""The module paths of minivae before the redesign (a flat folder), kept importable.

``from minivae.layers import relu_forward`` and the like still work: each old path is an alias of
the module that holds its names now (a module that was split is a namespace of its parts).
New code imports from the new paths; this table is the only place that knows the old ones.
"""
from __future__ import annotations

import importlib
import sys
import types

OLD_PATHS = {
    "layers": ("minivae.ops.layers",),
    "likelihoods": ("minivae.ops.likelihoods",),
    "gaussian": ("minivae.ops.latent",),
    "strict": ("minivae.backend.strict",),
    "engine": ("minivae.fast.engine",),
    "threads": ("minivae.fast.threads",),
    "kernels": ("minivae.fast.array_kernels", "minivae.fast.sources", "minivae.fast.cuda_kernels",
                "minivae.fast.dispatch"),
    "host_kernels": ("minivae.fast.cpu_library", "minivae.fast.cpu_kernels"),
    "train": ("minivae.training.loop",),
    "step": ("minivae.training.step",),
    "checkpoint": ("minivae.training.checkpoint",),
    "evaluate": ("minivae.training.evaluate",),
    "data": ("minivae.training.data",),
    "estimators": ("minivae.study.estimators",),
    "posterior": ("minivae.study.posterior",),
    "study_plots": ("minivae.plots.study",),
}

# names renamed by the redesign: old path -> {old name: new name}
RENAMED = {"kernels": {"ACTIVATIONS": "KERNEL_ACTIVATIONS"}}


def install(package) -> None:
    """Register every old path in ``sys.modules`` and as an attribute of ``package`` (minivae)."""
    for old, new_paths in OLD_PATHS.items():
        modules = [importlib.import_module(path) for path in new_paths]
        if len(modules) == 1:
            alias = modules[0]
        else:
            alias = types.ModuleType(f"minivae.{old}", f"Old path of {', '.join(new_paths)}.")
            for module in modules:
                alias.__dict__.update({k: v for k, v in vars(module).items() if not k.startswith("__")})
            for old_name, new_name in RENAMED.get(old, {}).items():
                setattr(alias, old_name, getattr(alias, new_name))
        sys.modules[f"minivae.{old}"] = alias
        if not hasattr(package, old):
            setattr(package, old, alias)
