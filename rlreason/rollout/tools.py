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
import signal
import subprocess
import sys
import tempfile
from pathlib import Path
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
MAX_RESULT_BITS = 4096  # and no intermediate result beyond this (((9**99)**99)**99 is 30 characters)
MAX_EXPRESSION_CHARS = 200


def _bits(x: int | float) -> int:
    """Bits of an integer's magnitude; floats are bounded by their type (overflow raises)."""
    return abs(x).bit_length() if isinstance(x, int) else 0


def _evaluate(node: ast.AST) -> int | float:
    if isinstance(node, ast.Expression):
        return _evaluate(node.body)
    if isinstance(node, ast.Constant) and type(node.value) in (int, float):
        return node.value
    if isinstance(node, ast.BinOp) and type(node.op) in _BINARY:
        left, right = _evaluate(node.left), _evaluate(node.right)
        if isinstance(node.op, ast.Pow) and abs(right) > MAX_EXPONENT:
            raise ToolError(f"exponent {right} is larger than {MAX_EXPONENT}")
        size = (_bits(left) * abs(right) if isinstance(node.op, ast.Pow)
                else _bits(left) + _bits(right) if isinstance(node.op, ast.Mult) else 0)
        if size > MAX_RESULT_BITS:
            raise ToolError(f"the result would have more than {MAX_RESULT_BITS} bits")
        try:
            return _BINARY[type(node.op)](left, right)
        except ZeroDivisionError:
            raise ToolError("division by zero") from None
        except OverflowError:
            raise ToolError("the result is too large") from None
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

# Run in the child before the user's code: OS limits on memory, CPU time, file size and
# process count, and no sockets from Python's socket module. Set here rather than in a
# preexec_fn, which is unsafe in a threaded parent (the trainer runs torch and rollout
# threads) and would fork the whole trainer. Not a security boundary (ctypes or an exec
# can get around the socket guard): run untrusted models' code in a container without network.
_PRELUDE = """
import resource as _r
for _k, _v in (("RLIMIT_AS", {mem}), ("RLIMIT_CPU", {cpu}), ("RLIMIT_FSIZE", {fsize}), ("RLIMIT_NPROC", {nproc})):
    try:
        _r.setrlimit(getattr(_r, _k), (_v, _v))
    except (ValueError, OSError):
        pass
import socket as _s
def _no_network(*a, **k):
    raise OSError("network access is disabled in the python tool")
_s.socket = _no_network
_s.create_connection = _no_network
del _r, _k, _v, _s, _no_network
"""


def run_python(code: str, *, timeout_s: float = 5.0, memory_mb: int = 512, max_output_chars: int = 1000,
               max_processes: int = 64) -> str:
    """Run `code` in a fresh `python -I` process in an empty temporary folder: wall-clock
    limit `timeout_s` (its process group is killed), address space `memory_mb`, at most
    `max_processes` processes of this user, files of at most 16 MiB, no network from
    Python's socket module. Output goes to files (a pipe read into the trainer could hold
    whatever the code prints); stdout then stderr, cut to `max_output_chars`."""
    if timeout_s <= 0 or memory_mb <= 0 or max_output_chars <= 0 or max_processes <= 0:
        raise ToolError("timeout_s, memory_mb, max_output_chars and max_processes must be positive")
    prelude = _PRELUDE.format(mem=memory_mb << 20, cpu=int(timeout_s) + 1, fsize=16 << 20, nproc=max_processes)
    with tempfile.TemporaryDirectory(prefix="rlreason-python-tool-") as cwd:
        out_path, err_path = Path(cwd) / ".stdout", Path(cwd) / ".stderr"
        with out_path.open("wb") as out, err_path.open("wb") as err:
            proc = subprocess.Popen(
                [sys.executable, "-I", "-c", prelude + "\n" + code], cwd=cwd, stdin=subprocess.DEVNULL,
                stdout=out, stderr=err, start_new_session=True,
                env={"PATH": os.environ.get("PATH", ""), "PYTHONIOENCODING": "utf-8"})
            try:
                proc.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=5)
                raise ToolError(f"timed out after {timeout_s:g} s") from None
        limit = 4 * max_output_chars  # bytes: enough for max_output_chars characters of UTF-8
        text = "".join(path.open("rb").read(limit).decode("utf-8", "replace") for path in (out_path, err_path))
    if proc.returncode != 0 and not text.strip():
        text = f"exited with status {proc.returncode}"
    if len(text) > max_output_chars:
        text = text[:max_output_chars] + f"... [cut at {max_output_chars} characters]"
    return text.rstrip("\n")


def python(arguments: Any, *, timeout_s: float = 5.0, memory_mb: int = 512, max_output_chars: int = 1000,
           max_processes: int = 64) -> str:
    """The Python tool: runs the code argument (see run_python for the limits)."""
    return run_python(_argument(arguments, "code"), timeout_s=timeout_s, memory_mb=memory_mb,
                      max_output_chars=max_output_chars, max_processes=max_processes)
