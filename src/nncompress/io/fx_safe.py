"""Loading a pickled ``torch.fx.GraphModule`` (int8 models of the ``torch`` backend) without running the file's code.

A GraphModule pickles as its attributes plus the Python source of its ``forward``, and torch's
``reduce_graph_module`` ``exec``-s that source with the imports the file names. Here the source is
parsed first and must be what fx generates: one ``def forward`` of assignments and a return, whose
calls go to the graph's own submodules and tensors, to tensor methods, to operators, or to torch's
tensor ops (``torch.<op>``, ``torch.ops.<namespace>.<op>``, ``torch.nn.functional``,
``torch._C._nn``), never to ``torch.load``/``save``/``from_file``, dunder attributes, imports,
``open``, ``eval`` or anything else. It then runs in a namespace holding only those names, and torch's
own ``_deserialize_graph_module`` re-traces it into a graph, as ``reduce_graph_module`` would.

Example:
    >>> check_forward_source("def forward(self, x):\\n    y = torch.relu(x)\\n    return y")
    >>> check_forward_source("def forward(self, x):\\n    return open('f')")
    Traceback (most recent call last):
    ...
    ValueError: graph code names 'open', which is neither a local nor an allowed op
"""

from __future__ import annotations

import ast
import math
import types
from typing import Any

import torch

SAFE_BUILTINS: dict[str, Any] = {
    "getattr": getattr,
    "len": len,
    "int": int,
    "float": float,
    "bool": bool,
    "slice": slice,
    "range": range,
    "tuple": tuple,
    "list": list,
    "abs": abs,
    "min": min,
    "max": max,
}
OP_NAMESPACES = ("aten", "quantized", "prims", "quantized_decomposed")
BLOCKED_TORCH = frozenset({"load", "save", "from_file", "hub", "jit", "package", "compile", "set_default_device"})
PYTREE_FUNCTIONS = (["tree_flatten_spec"], ["tree_unflatten"], ["tree_flatten"], ["tree_leaves"])
BLOCKED_METHODS = frozenset({"numpy", "tofile", "storage", "untyped_storage", "share_memory_", "from_file", "save"})
_NODES = (
    ast.Module,
    ast.FunctionDef,
    ast.arguments,
    ast.arg,
    ast.Assign,
    ast.AnnAssign,
    ast.Return,
    ast.Expr,
    ast.Pass,
    ast.Delete,
    ast.Name,
    ast.Load,
    ast.Store,
    ast.Del,
    ast.Constant,
    ast.Tuple,
    ast.List,
    ast.Dict,
    ast.Subscript,
    ast.Slice,
    ast.Call,
    ast.keyword,
    ast.Attribute,
    ast.BinOp,
    ast.UnaryOp,
    ast.Compare,
    ast.BoolOp,
    ast.Starred,
    ast.operator,
    ast.unaryop,
    ast.cmpop,
    ast.boolop,
)


def _namespace() -> dict[str, Any]:
    import torch.fx._pytree as fx_pytree
    import torch.utils._pytree as pytree

    return {
        "__builtins__": {},
        **SAFE_BUILTINS,
        "torch": torch,
        "inf": math.inf,
        "nan": math.nan,
        "device": torch.device,
        "NoneType": type(None),
        "fx_pytree": fx_pytree,
        "pytree": pytree,
    }


def _chain(node: ast.AST) -> list[str] | None:
    """``torch.ops.aten.add`` -> ["torch", "ops", "aten", "add"]; None when not rooted at a name."""
    parts: list[str] = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if not isinstance(node, ast.Name):
        return None
    return [node.id, *reversed(parts)]


def _check_torch_chain(chain: list[str]) -> None:
    rest = chain[1:]
    if len(rest) == 1:
        obj = getattr(torch, rest[0], None)
        if rest[0] not in BLOCKED_TORCH and (
            isinstance(obj, (types.BuiltinFunctionType, torch.dtype))
            or obj in (torch.Tensor, torch.device)
            or getattr(obj, "__module__", "") == "torch.functional"
        ):
            return
    op = rest[:1] == ["ops"] and len(rest) in (3, 4) and rest[1] in OP_NAMESPACES
    nn_function = rest[:2] in (["_C", "_nn"], ["nn", "functional"]) and len(rest) == 3
    tensor_method = rest[:1] == ["Tensor"] and len(rest) == 2
    if (op or nn_function or tensor_method) and not rest[-1].startswith("_"):
        return
    raise ValueError(f"graph code uses {'.'.join(chain)!r}, which is not a torch tensor op")


def check_forward_source(src: str) -> None:
    """ValueError unless ``src`` is an fx-generated ``forward`` that only calls allowed things."""
    tree = ast.parse(src)
    if len(tree.body) != 1 or not isinstance(tree.body[0], ast.FunctionDef) or tree.body[0].name != "forward":
        raise ValueError("graph code must be a single 'def forward'")
    fn = tree.body[0]
    if fn.decorator_list or fn.returns is not None:
        raise ValueError("graph code's forward has decorators or a return annotation")
    local = {a.arg for a in (*fn.args.posonlyargs, *fn.args.args, *fn.args.kwonlyargs)}
    local |= {a.arg for a in (fn.args.vararg, fn.args.kwarg) if a is not None}
    for node in ast.walk(fn):
        if isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
            local.add(node.id)
    allowed_names = local | set(_namespace()) - {"__builtins__"}
    inner = {id(n.value) for n in ast.walk(tree) if isinstance(n, ast.Attribute)}  # checked with their chain
    for node in ast.walk(tree):
        if not isinstance(node, _NODES):
            raise ValueError(f"graph code holds a {type(node).__name__}, which fx does not generate")
        if isinstance(node, ast.Name) and (node.id.startswith("__") or node.id not in allowed_names):
            raise ValueError(f"graph code names {node.id!r}, which is neither a local nor an allowed op")
        if isinstance(node, ast.Attribute):
            if node.attr.startswith("__") or node.attr in BLOCKED_METHODS:
                raise ValueError(f"graph code reads attribute {node.attr!r}")
            if isinstance(node.value, ast.Constant):
                raise ValueError("graph code reads an attribute of a constant")
            chain = _chain(node)
            if chain is not None and id(node) not in inner:
                if chain[0] == "torch":
                    _check_torch_chain(chain)
                elif chain[0] in ("fx_pytree", "pytree") and chain[1:] not in PYTREE_FUNCTIONS:
                    raise ValueError(f"graph code uses {'.'.join(chain)!r}")
                elif chain[0] not in local and chain[0] not in ("torch", "fx_pytree", "pytree"):
                    raise ValueError(f"graph code reads attribute {node.attr!r} of {chain[0]!r}")
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "getattr":
            target = node.args[0] if node.args else None
            if not (isinstance(target, ast.Name) and target.id in local) and not isinstance(
                target, (ast.Attribute, ast.Call, ast.Subscript)
            ):
                raise ValueError("graph code calls getattr on something that is not a value of the graph")
            if isinstance(target, ast.Attribute) and (_chain(target) or ["x"])[0] not in local:
                raise ValueError("graph code calls getattr on something that is not a value of the graph")
            name = node.args[1] if len(node.args) >= 2 else None
            if not (isinstance(name, ast.Constant) and isinstance(name.value, str)) or name.value.startswith("__"):
                raise ValueError("graph code calls getattr with a name that is not a plain string constant")
            if name.value in BLOCKED_METHODS:
                raise ValueError(f"graph code reads attribute {name.value!r}")


def safe_reduce_graph_module(body: dict[str, Any], import_block: str) -> torch.nn.Module:
    """What ``torch.fx.graph_module.reduce_graph_module`` does, minus running the file's imports, and
    only for forward code that ``check_forward_source`` accepts."""
    from torch.fx.graph_module import _deserialize_graph_module

    if not isinstance(body, dict):
        raise TypeError("a GraphModule's pickled body must be a dict")
    src = body.get("_code") or body.get("code")
    if not isinstance(src, str):
        raise TypeError("a GraphModule's pickled body has no forward source")
    if body.get("_tracer_cls") is not None or not str(body.get("_graphmodule_cls_name", "G")).isidentifier():
        raise ValueError("a GraphModule with a custom tracer or class name needs trust=('torch.fx',)")
    src = src.strip("\n")
    lines = src.splitlines()
    indent = min((len(line) - len(line.lstrip()) for line in lines if line.strip()), default=0)
    src = "\n".join(line[indent:] for line in lines)
    check_forward_source(src)
    namespace = _namespace()
    exec(compile(src, "<nncompress checked fx graph>", "exec", dont_inherit=True), namespace)  # noqa: S102
    return _deserialize_graph_module(namespace["forward"], body)
