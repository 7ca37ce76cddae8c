"""Which code an artifact's skeleton may name: a restricted unpickler with an allow-list.

A skeleton is a pickle, and a plain ``pickle.loads`` imports and calls whatever the file names
(``os.system``, ``builtins.exec``, ...). Here every name the pickle asks for goes through
``resolve``, which allows only:

- nncompress's own rebuild functions and the data types a module tree needs (``OrderedDict``,
  ``set``, ``functools.partial``, ``torch.Size``, dtypes, and the tensor rebuild functions torch's
  own ``weights_only`` loader allows);
- classes of nncompress and of ``torch.nn`` / ``torch.ao.nn`` that are modules, dataclasses or enums,
  and the functions of ``torch.nn.functional`` (activations stored as attributes);
- classes and functions of the modules the caller trusts: ``load(path, trust=("transformers",))``,
  ``trust_modules("mypkg")`` for the whole process, or ``--trust MODULE`` on the command line.
  Trusting a module means trusting its code: only trust packages you would import anyway.

Anything else raises ``ArtifactError`` naming the ``module.qualname`` it would have imported and
how to trust it. Names are resolved at their canonical home only (a trusted module re-exporting
``os.system`` does not make ``os.system`` loadable) and never through dunder attributes.

Example:
    >>> import pickle, os
    >>> loads_restricted(pickle.dumps(os.system), source="x.ncz")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    nncompress.io.trust.UntrustedCodeError: x.ncz: the model skeleton names posix.system, which ...
"""

from __future__ import annotations

import _compat_pickle
import dataclasses
import enum
import functools
import importlib
import io
import pickle
import types
from collections.abc import Iterable
from typing import Any

import torch
from torch import nn

from nncompress.base.compat import prepare_import
from nncompress.io.errors import ArtifactError

_TRUSTED: set[str] = set()  # module prefixes trusted for this process (trust_modules)

# classes (nn.Module subclasses, dataclasses, enums) of these packages load without trust
BUILTIN_CLASS_PREFIXES = ("nncompress", "torch.nn", "torch.ao.nn")
# never trustable: trusting them would allow running arbitrary code or touching the system
FORBIDDEN = frozenset(
    {
        "builtins",
        "os",
        "posix",
        "nt",
        "sys",
        "subprocess",
        "shutil",
        "pickle",
        "marshal",
        "importlib",
        "runpy",
        "code",
        "codeop",
        "ctypes",
        "socket",
        "io",
        "pathlib",
        "tempfile",
        "multiprocessing",
        "threading",
        "signal",
        "pty",
        "platform",
        "webbrowser",
        "_codecs",
        "operator",
        "functools",
        "types",
        "inspect",
        "copyreg",
    }
)
WHOLE_PACKAGE_FORBIDDEN = frozenset({"torch", "numpy"})  # too broad (torch.load, ...): trust a subpackage


class UntrustedCodeError(ArtifactError):
    """A skeleton names a class or function that is not allowed (not trusted by the caller)."""


def _normalize(prefix: str) -> str:
    if not isinstance(prefix, str) or not prefix.strip() or not all(p.isidentifier() for p in prefix.split(".")):
        raise ValueError(f"trust takes module names such as 'transformers' or 'mypkg.models', got {prefix!r}")
    if prefix.split(".")[0] in FORBIDDEN or prefix in WHOLE_PACKAGE_FORBIDDEN:
        raise ValueError(
            f"refusing to trust {prefix!r}: it would let an artifact run arbitrary code; trust the "
            "package that defines your model instead"
        )
    return prefix


def trust_modules(*prefixes: str) -> None:
    """Trust classes and functions of these modules (and their submodules) in every later load."""
    _TRUSTED.update(_normalize(p) for p in prefixes)


def untrust_modules(*prefixes: str) -> None:
    """Undo ``trust_modules`` for these prefixes."""
    _TRUSTED.difference_update(prefixes)


def trusted_modules() -> tuple[str, ...]:
    """The module prefixes trusted for this process."""
    return tuple(sorted(_TRUSTED))


def normalize_trust(trust: str | Iterable[str] | None) -> tuple[str, ...]:
    """``trust`` as a tuple of checked module prefixes (a lone string is one prefix)."""
    if trust is None:
        return ()
    if isinstance(trust, str):
        trust = (trust,)
    return tuple(_normalize(p) for p in trust)


def _under(module: str, prefixes: Iterable[str]) -> bool:
    return any(module == p or module.startswith(p + ".") for p in prefixes)


def _safe_load_from_bytes(data: bytes) -> Any:
    """``torch.storage._load_from_bytes`` (how a plain pickle holds a tensor's storage), weights only."""
    return torch.load(io.BytesIO(data), weights_only=True)


@functools.cache
def _exact_globals() -> dict[str, Any]:
    """``module.qualname`` -> object for the names allowed whatever the caller trusts."""
    import torch.ao.quantization.fx._lower_to_native_backend as native
    from torch._weights_only_unpickler import _get_allowed_globals

    from nncompress.io import fx_safe, quantized, skeleton

    allowed = dict(_get_allowed_globals())  # dtypes, Size, OrderedDict, set, tensor rebuild functions
    allowed.update(
        {
            "nncompress.io.skeleton.rebuild_module": skeleton.rebuild_module,
            "nncompress.io.skeleton.rebuild_meta": skeleton.rebuild_meta,
            "nncompress.io.skeleton.rebuild_tensor": skeleton.rebuild_tensor,
            "nncompress.io.quantized._rebuild_packed": quantized._rebuild_packed,
            "torch.storage._load_from_bytes": _safe_load_from_bytes,
            # fx GraphModules (int8 of the torch backend): their forward source is checked, not trusted
            "torch.fx.graph_module.reduce_graph_module": fx_safe.safe_reduce_graph_module,
            **{  # the state-dict hooks torch.ao's lowering registers on those GraphModules
                f"torch.ao.quantization.fx._lower_to_native_backend.{n}": getattr(native, n)
                for n in ("_save_packed_weight", "_load_packed_weight")
            },
            "functools.partial": functools.partial,
            "builtins.frozenset": frozenset,
            "builtins.slice": slice,
            "builtins.range": range,
            "builtins.bytes": bytes,
            "torch.nn.parameter.Buffer": nn.Buffer,
            "torch.nn.modules.module._WrappedHook": torch.nn.modules.module._WrappedHook,  # hooks with a module
        }
    )
    for name in dir(torch.nn.functional):  # activations held as attributes (act = F.gelu)
        obj = getattr(torch.nn.functional, name)
        if not name.startswith("_") and callable(obj) and not isinstance(obj, type):
            home = f"{getattr(obj, '__module__', None) or 'torch._C._nn'}.{getattr(obj, '__qualname__', name)}"
            allowed.setdefault(f"torch.nn.functional.{name}", obj)
            if home.startswith(("torch.nn.functional.", "torch._C._nn.", "torch.")):
                allowed.setdefault(home, obj)
    for name in dir(torch._C._nn):
        obj = getattr(torch._C._nn, name)
        if not name.startswith("_") and isinstance(obj, types.BuiltinFunctionType):
            allowed.setdefault(f"torch._C._nn.{name}", obj)
    return allowed


def _resolve_attr(module: str, qualname: str) -> Any:
    """``module.qualname`` imported, walking the dotted qualname without dunder attributes."""
    if any(part.startswith("__") or not part.isidentifier() for part in qualname.split(".")):
        raise AttributeError(qualname)
    prepare_import(module)  # transformers/timm import torchvision, which may need its op schemas declared
    obj: Any = importlib.import_module(module)
    for part in qualname.split("."):
        obj = getattr(obj, part)
    return obj


def _is_canonical(obj: Any, module: str, qualname: str) -> bool:
    """``obj`` really lives at ``module.qualname`` (not a re-export of something from elsewhere)."""
    return getattr(obj, "__module__", None) == module and getattr(obj, "__qualname__", None) == qualname


def _builtin_class_ok(obj: Any) -> bool:
    return isinstance(obj, type) and (
        issubclass(obj, (nn.Module, enum.Enum, torch.Tensor)) or dataclasses.is_dataclass(obj)
    )


def _kernel_func_rebuilder(trusted: tuple[str, ...], source: str) -> Any:
    """Hugging Face ``kernels``' rebuild of a hub-kernel function wrapper (Llama's rotary embedding in
    transformers 5): it imports the module it is given, so only modules the caller trusts."""

    def rebuild(module_name: Any, func_name: Any) -> Any:
        from kernels._internals.layer.layer import _rebuild_kernel_func

        if not (isinstance(module_name, str) and isinstance(func_name, str) and _under(module_name, trusted)):
            raise UntrustedCodeError(
                f"{source}: a kernel function asks to import {module_name!r}, which is not trusted; pass "
                f"trust=({str(module_name).split('.')[0]!r},) if you trust this artifact's author"
            )
        return _rebuild_kernel_func(module_name, func_name)

    return rebuild


GUARDED = {"kernels._internals.layer.layer._rebuild_kernel_func": _kernel_func_rebuilder}


def resolve(module: str, qualname: str, trust: tuple[str, ...], source: str) -> Any:
    """The object ``module.qualname`` when the policy allows it, else ``UntrustedCodeError``."""
    key = f"{module}.{qualname}"
    exact = _exact_globals()
    if key in exact:
        return exact[key]
    trusted = tuple(sorted({*trust, *_TRUSTED}))
    if key in GUARDED:
        return GUARDED[key](tuple(p for p in trusted if p.split(".")[0] not in FORBIDDEN), source)
    try:
        return _resolve_class(module, qualname, trusted)
    except _Refused as e:
        raise UntrustedCodeError(str(e).replace("<source>", source)) from e.__cause__


class _Refused(Exception):
    """Internal: ``_resolve_class`` refused (the message has a ``<source>`` placeholder)."""


@functools.lru_cache(maxsize=4096)
def _resolve_class(module: str, qualname: str, trusted: tuple[str, ...]) -> Any:
    """The allowed class or function ``module.qualname`` (cached: a skeleton names each many times)."""
    key = f"{module}.{qualname}"
    source = "<source>"
    try:
        if _under(module, BUILTIN_CLASS_PREFIXES):
            obj = _resolve_attr(module, qualname)
            if _is_canonical(obj, module, qualname) and _builtin_class_ok(obj):
                return obj
        if _under(module, trusted) and module.split(".")[0] not in FORBIDDEN:
            obj = _resolve_attr(module, qualname)
            if (isinstance(obj, (type, types.FunctionType))) and _is_canonical(obj, module, qualname):
                return obj
    except (ImportError, AttributeError) as e:
        raise _Refused(
            f"{source}: the model skeleton names {key}, which cannot be imported here ({e}); install or "
            "import the package that defines the model"
        ) from e
    top = module.split(".")[0]
    if top in WHOLE_PACKAGE_FORBIDDEN:
        top = ".".join(module.split(".")[:2])
    hint = (
        f"if you trust this artifact's author, pass trust=({top!r},) to nncompress.load, "
        f"--trust {top} on the command line, or call nncompress.io.trust_modules({top!r})"
        if top not in FORBIDDEN
        else "no trust setting allows it: the artifact is unsafe or corrupt"
    )
    raise _Refused(f"{source}: the model skeleton names {key}, which is not allowed to load; {hint}")


class RestrictedUnpickler(pickle.Unpickler):
    """An unpickler that resolves names only through ``resolve`` (no persistent ids)."""

    trust: tuple[str, ...] = ()
    source: str = "artifact"

    def find_class(self, module: str, name: str) -> Any:
        # Python 2 names (``__builtin__.set``) in protocol 0-2 pickles: torch.save writes protocol 2
        if (module, name) in _compat_pickle.NAME_MAPPING:
            module, name = _compat_pickle.NAME_MAPPING[(module, name)]
        module = _compat_pickle.IMPORT_MAPPING.get(module, module)
        return resolve(module, name, self.trust, self.source)


def loads_restricted(data: bytes, *, trust: tuple[str, ...] = (), source: str = "artifact") -> Any:
    """``pickle.loads`` through ``RestrictedUnpickler``."""
    unpickler = RestrictedUnpickler(io.BytesIO(data))
    unpickler.trust, unpickler.source = trust, source
    return unpickler.load()


def restricted_pickle_module(trust: tuple[str, ...], source: str) -> types.ModuleType:
    """A ``pickle_module`` for ``torch.load`` whose Unpickler is restricted (legacy ``skeleton.pt``)."""
    mod = types.ModuleType("nncompress_restricted_pickle")

    class _Unpickler(RestrictedUnpickler):
        pass

    _Unpickler.trust, _Unpickler.source = trust, source
    mod.Unpickler = _Unpickler  # type: ignore[attr-defined]
    mod.load = lambda f, **kw: _Unpickler(f, **kw).load()  # type: ignore[attr-defined]
    mod.__dict__["__name__"] = "pickle"
    return mod
