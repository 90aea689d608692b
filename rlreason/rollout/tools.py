"""Built-in tools: a calculator and a Python runner.

A tool is a callable `tool(arguments) -> str`: `arguments` is the text between a plain
tag's brackets, or the JSON arguments object of a chat-template tool call. It returns the
text the model sees; it raises `ToolError` (or anything) when it fails, and the tool
environment turns that into an error message for the model (the episode goes on).
Registered in registry.TOOLS; a tool of your own is `module:function`.
"""
from __future__ import annotations

import ast
import operator
import os
import resource
import signal
import subprocess
import sys
import tempfile
from typing import Any


class ToolError(Exception):
    """A tool could not do what was asked; the message is shown to the model."""


def _argument(arguments: Any, key: str) -> str:
    """The one argument of a single-argument tool: the text itself, or `key` of a JSON object."""
    if isinstance(arguments, dict):
        if key not in arguments:
            raise ToolError(f"missing argument {key!r}")
        arguments = arguments[key]
    if not isinstance(arguments, str):
        raise ToolError(f"{key} must be a string")
    return arguments


# ------------------------------------------------------------------ calculator

_BINARY = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul,
           ast.Div: operator.truediv, ast.FloorDiv: operator.floordiv, ast.Mod: operator.mod,
           ast.Pow: operator.pow}
_UNARY = {ast.UAdd: operator.pos, ast.USub: operator.neg}
MAX_EXPONENT = 100  # 10**100 is fine; 9**9**9 would hang the process
MAX_EXPRESSION_CHARS = 200


def _evaluate(node: ast.AST) -> int | float:
    if isinstance(node, ast.Expression):
        return _evaluate(node.body)
    if isinstance(node, ast.Constant) and type(node.value) in (int, float):
        return node.value
    if isinstance(node, ast.BinOp) and type(node.op) in _BINARY:
        left, right = _evaluate(node.left), _evaluate(node.right)
        if isinstance(node.op, ast.Pow) and abs(right) > MAX_EXPONENT:
            raise ToolError(f"exponent {right} is larger than {MAX_EXPONENT}")
        try:
            return _BINARY[type(node.op)](left, right)
        except ZeroDivisionError:
            raise ToolError("division by zero") from None
    if isinstance(node, ast.UnaryOp) and type(node.op) in _UNARY:
        return _UNARY[type(node.op)](_evaluate(node.operand))
    raise ToolError(f"not arithmetic: {ast.unparse(node)!r} (numbers, + - * / // % ** and parentheses only)")


def calculator(arguments: Any) -> str:
    """Arithmetic on numbers: + - * / // % ** and parentheses. The expression is parsed and
    walked node by node (no eval: a name, call or attribute is refused)."""
    expr = _argument(arguments, "expression").strip()
    if len(expr) > MAX_EXPRESSION_CHARS:
        raise ToolError(f"expression longer than {MAX_EXPRESSION_CHARS} characters")
    try:
        tree = ast.parse(expr, mode="eval")
    except SyntaxError:
        raise ToolError(f"cannot parse {expr!r}") from None
    value = _evaluate(tree)
    if isinstance(value, float) and value.is_integer() and abs(value) < 2**53:
        value = int(value)
    return str(value)


# ------------------------------------------------------------------ python

# Run before the user's code in the child: no sockets (no network from Python code).
# Not a security boundary (ctypes or a subprocess can get around it): run untrusted
# models' code in a container or VM without network. Limits below are enforced by the OS.
_PRELUDE = """
import socket as _s
def _no_network(*a, **k):
    raise OSError("network access is disabled in the python tool")
_s.socket = _no_network
_s.create_connection = _no_network
del _s, _no_network
"""


def _limits(memory_mb: int, cpu_s: int):
    def apply() -> None:  # in the child, before exec
        mem = memory_mb << 20
        resource.setrlimit(resource.RLIMIT_AS, (mem, mem))
        resource.setrlimit(resource.RLIMIT_CPU, (cpu_s, cpu_s))
        resource.setrlimit(resource.RLIMIT_FSIZE, (16 << 20, 16 << 20))
    return apply


def run_python(code: str, *, timeout_s: float = 5.0, memory_mb: int = 512, max_output_chars: int = 1000) -> str:
    """Run `code` in a fresh `python -I` subprocess in an empty temporary folder: wall-clock
    limit `timeout_s` (the process group is killed), address space `memory_mb`, no network
    from Python's socket module, output (stdout then stderr) cut to `max_output_chars`."""
    with tempfile.TemporaryDirectory(prefix="rlreason-python-tool-") as cwd:
        proc = subprocess.Popen(
            [sys.executable, "-I", "-c", _PRELUDE + "\n" + code], cwd=cwd, stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True,
            env={"PATH": os.environ.get("PATH", ""), "PYTHONIOENCODING": "utf-8"},
            preexec_fn=_limits(memory_mb, int(timeout_s) + 1),
        )
        try:
            out, err = proc.communicate(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate()
            raise ToolError(f"timed out after {timeout_s:g} s") from None
    text = out.decode("utf-8", "replace") + err.decode("utf-8", "replace")
    if proc.returncode != 0 and not text.strip():
        text = f"exited with status {proc.returncode}"
    if len(text) > max_output_chars:
        text = text[:max_output_chars] + f"... [cut at {max_output_chars} characters]"
    return text.rstrip("\n")


def python(arguments: Any, **limits: Any) -> str:
    """The Python tool: runs the code argument (see run_python for the limits)."""
    return run_python(_argument(arguments, "code"), **limits)
