"""A pickle *parser* (not an unpickler) for the values legacy image LMDBs hold.

Tools such as tensorpack's ``LMDBSerializer`` and the ``folder2lmdb.py`` scripts store each
record as ``pickle.dumps((image_bytes, label))`` or ``pickle.dumps([uint8_array, label])``.
Calling ``pickle.loads`` on such a file runs whatever code the file asks for, so this module
reads the opcode stream itself and accepts only the shapes those writers produce:

* ``bytes`` (``BINBYTES``, ``SHORT_BINBYTES``, ``BINBYTES8``, ``BYTEARRAY8`` and protocol 2's
  ``_codecs.encode(<str>, 'latin1')`` and ``bytes()``), ``str``, ``int``, ``float``, ``bool``, ``None``,
  tuples and lists;
* numpy arrays of numeric dtypes, from the exact opcode shapes numpy writes:
  ``numpy[._]core.multiarray._reconstruct(ndarray, (0,), b'b')`` + ``BUILD`` (protocols 2-4),
  ``numpy[._]core.numeric._frombuffer(buffer, dtype, shape, order)`` (protocol 5), numpy
  scalars (``multiarray.scalar(dtype, bytes)``) and ``numpy.dtype(code, False, True)`` +
  ``BUILD``.

Those names are never imported or called: each is matched as a literal pair of strings and
re-implemented with ``np.frombuffer`` (copying the bytes, numeric dtypes only). Everything
else - any other global, ``REDUCE`` or ``BUILD`` on anything but those shapes, object
dtypes, extension opcodes (``EXT1/2/4``), ``PERSID``, ``INST``/``OBJ``/``NEWOBJ``, dicts and
sets, memo indices that skip ahead, nesting deeper than :data:`MAX_DEPTH` - raises
:class:`UnsupportedValueError` naming the record.
"""

from __future__ import annotations

import math
import struct
from typing import Any

import numpy as np

from .errors import UnsupportedValueError

MAX_DEPTH = 16
"""Deepest nesting of tuples/lists (and MARKs) accepted; real records nest 2-3 levels."""

NUMERIC_DTYPES = frozenset({"b1", "u1", "i1", "u2", "i2", "u4", "i4", "u8", "i8", "f2", "f4", "f8"})
"""numpy dtype codes an array may have; anything else (objects, strings, records) is refused."""

_NUMPY_MODULES = ("numpy.core.multiarray", "numpy._core.multiarray")
_NUMERIC_MODULES = ("numpy.core.numeric", "numpy._core.numeric")
_GLOBALS = {
    ("_codecs", "encode"): "encode",
    ("__builtin__", "bytes"): "bytes",
    ("builtins", "bytes"): "bytes",
    ("numpy", "ndarray"): "ndarray",
    ("numpy", "dtype"): "dtype",
    **{(module, "_reconstruct"): "reconstruct" for module in _NUMPY_MODULES},
    **{(module, "scalar"): "scalar" for module in _NUMPY_MODULES},
    **{(module, "_frombuffer"): "frombuffer" for module in _NUMERIC_MODULES},
}


class _Global:
    """An allowed global, by name only: a token for REDUCE to dispatch on, never resolved."""

    def __init__(self, name: str) -> None:
        self.name = name


class _Dtype:
    """``numpy.dtype(code, False, True)`` waiting for (or finished by) its BUILD state."""

    def __init__(self, code: str) -> None:
        self.code = code
        self.dtype: np.dtype | None = None


class _PendingArray:
    """``_reconstruct(ndarray, (0,), b'b')``: an empty array waiting for its BUILD state.

    The memo holds this placeholder (pickle memoizes the REDUCE result before BUILD), so a
    later reference to the same array finds the built array in ``array``.
    """

    def __init__(self) -> None:
        self.array: np.ndarray | None = None


class _Mark:
    """The MARK sentinel on the stack."""


_MARK = _Mark()
_ARRAY_STATE_VERSION = 1
_DTYPE_STATE_VERSION = 3


def loads(data: bytes | memoryview, *, where: str = "value") -> Any:
    """Parse a pickle of bytes/ints/tuples/lists/numeric numpy arrays without running it.

    Args:
        data: The pickled bytes (protocol 2 to 5).
        where: What the bytes are, for error messages (e.g. ``"record b'00000012'"``).

    Returns:
        The value: nested tuples/lists of ``bytes``, ``str``, ``int``, ``float``, ``bool``,
        ``None`` and (fresh, writable) numpy arrays.

    Raises:
        UnsupportedValueError: The bytes are not such a pickle; the message says what was
            refused (nothing was executed).
    """
    try:
        return _Parser(memoryview(data).cast("B"), where).run()
    except UnsupportedValueError:
        raise
    except (struct.error, IndexError, UnicodeDecodeError, ValueError, TypeError) as exc:
        raise UnsupportedValueError(f"{where}: malformed pickle ({exc})") from None


class _Parser:
    def __init__(self, data: memoryview, where: str) -> None:
        self.data = data
        self.where = where
        self.pos = 0
        self.stack: list[Any] = []
        self.marks: list[list[Any]] = []
        self.memo: dict[int, Any] = {}

    def fail(self, message: str) -> UnsupportedValueError:
        return UnsupportedValueError(f"{self.where}: {message} (refused; nothing was executed)")

    def take(self, size: int) -> memoryview:
        if size < 0 or self.pos + size > len(self.data):
            raise self.fail(f"pickle truncated: {size} bytes wanted at offset {self.pos} of {len(self.data)}")
        chunk = self.data[self.pos:self.pos + size]
        self.pos += size
        return chunk

    def unpack(self, fmt: str) -> int:
        return struct.unpack(fmt, self.take(struct.calcsize(fmt)))[0]

    def pop(self) -> Any:
        if not self.stack:
            raise self.fail("pickle pops an empty stack")
        value = self.stack.pop()
        if value is _MARK:
            raise self.fail("pickle pops a MARK as a value")
        return value

    def pop_mark(self) -> list[Any]:
        if not self.marks:
            raise self.fail("pickle closes a MARK it never opened")
        items = self.stack
        self.stack = self.marks.pop()
        return items

    def run(self) -> Any:
        if self.take(1)[0] != 0x80:
            raise self.fail("not a pickle of protocol 2 or later (no PROTO opcode)")
        if not 2 <= self.take(1)[0] <= 5:
            raise self.fail("pickle protocol outside 2..5")
        while True:
            opcode = self.take(1)[0]
            handler = _HANDLERS.get(opcode)
            if handler is None:
                raise self.fail(f"pickle opcode {bytes([opcode])!r} at offset {self.pos - 1} is not allowed")
            if handler(self):
                break
        if self.marks or len(self.stack) != 1:
            raise self.fail("pickle leaves an unbalanced stack")
        result = self.stack[0]
        _check_tree(result, self)
        return result

    def push(self, value: Any) -> None:
        self.stack.append(value)

    def memo_put(self, index: int) -> None:
        if index > len(self.memo):
            raise self.fail(f"pickle memo index {index} skips ahead of {len(self.memo)} entries")
        if not self.stack or self.stack[-1] is _MARK:
            raise self.fail("pickle memoizes nothing")
        self.memo[index] = self.stack[-1]

    def memo_get(self, index: int) -> None:
        if index not in self.memo:
            raise self.fail(f"pickle reads memo index {index} that was never stored")
        value = self.memo[index]
        self.push(value.array if isinstance(value, _PendingArray) and value.array is not None else value)

    def global_(self, module: str, name: str) -> None:
        allowed = _GLOBALS.get((module, name))
        if allowed is None:
            raise self.fail(f"pickle asks for global {module}.{name}")
        self.push(_Global(allowed))

    def reduce(self) -> None:
        args = self.pop()
        func = self.pop()
        if not isinstance(func, _Global) or not isinstance(args, tuple):
            raise self.fail("pickle REDUCE on something other than an allowed numpy/codecs function")
        self.push(getattr(self, f"call_{func.name}", self.call_unknown)(args))

    def call_unknown(self, args: tuple) -> Any:
        raise self.fail("pickle calls a global that is only allowed as an argument")

    def call_encode(self, args: tuple) -> bytes:
        if len(args) != 2 or not isinstance(args[0], str) or args[1] != "latin1":
            raise self.fail("pickle calls _codecs.encode with other arguments than (str, 'latin1')")
        return args[0].encode("latin1")

    def call_bytes(self, args: tuple) -> bytes:
        if args != ():
            raise self.fail("pickle calls bytes with arguments (protocol 2 writes bytes() for b'' only)")
        return b""

    def call_reconstruct(self, args: tuple) -> _PendingArray:
        if (len(args) != 3 or not isinstance(args[0], _Global) or args[0].name != "ndarray"
                or args[1] != (0,) or args[2] != b"b"):
            raise self.fail("pickle calls numpy _reconstruct with other arguments than numpy writes")
        return _PendingArray()

    def call_dtype(self, args: tuple) -> _Dtype:
        if len(args) != 3 or args[1:] != (False, True) or not isinstance(args[0], str):
            raise self.fail("pickle calls numpy.dtype with other arguments than numpy writes")
        if args[0] not in NUMERIC_DTYPES:
            raise self.fail(f"numpy dtype {args[0]!r} is not a plain numeric dtype")
        return _Dtype(args[0])

    def call_frombuffer(self, args: tuple) -> np.ndarray:
        if len(args) != 4 or not isinstance(args[0], (bytes, bytearray)) or args[3] not in ("C", "F"):
            raise self.fail("pickle calls numpy _frombuffer with other arguments than numpy writes")
        return self.array(args[0], args[1], args[2], fortran=args[3] == "F")

    def call_scalar(self, args: tuple) -> int | float | bool:
        if len(args) != 2 or not isinstance(args[1], bytes):
            raise self.fail("pickle calls numpy scalar with other arguments than numpy writes")
        return self.array(args[1], args[0], ()).item()

    def array(self, buffer: bytes | bytearray, dtype: Any, shape: Any, *, fortran: bool = False) -> np.ndarray:
        if not isinstance(dtype, _Dtype) or dtype.dtype is None:
            raise self.fail("numpy array without a built numeric dtype")
        if (not isinstance(shape, tuple) or len(shape) > 8
                or not all(type(n) is int and 0 <= n < 1 << 40 for n in shape)):
            raise self.fail(f"numpy array shape {shape!r} is not a tuple of sizes")
        expected = math.prod(shape) * dtype.dtype.itemsize
        if expected != len(buffer):
            raise self.fail(f"numpy array of shape {shape} and dtype {dtype.dtype} needs {expected} bytes, "
                            f"the pickle holds {len(buffer)}")
        flat = np.frombuffer(buffer, dtype=dtype.dtype).copy()
        return flat.reshape(shape, order="F" if fortran else "C")

    def build(self) -> None:
        state = self.pop()
        target = self.pop()
        if isinstance(target, _Dtype) and target.dtype is None:
            if (not isinstance(state, tuple) or len(state) != 8 or state[0] != _DTYPE_STATE_VERSION
                    or state[1] not in ("<", ">", "|", "=") or state[2:5] != (None, None, None)
                    or not all(type(v) is int for v in state[5:])):
                raise self.fail("numpy dtype state is not the one numpy writes for numeric dtypes")
            target.dtype = np.dtype(("" if state[1] == "|" else state[1]) + target.code)
            self.push(target)
        elif isinstance(target, _PendingArray) and target.array is None:
            if (not isinstance(state, tuple) or len(state) != 5 or state[0] != _ARRAY_STATE_VERSION
                    or not isinstance(state[3], bool) or not isinstance(state[4], bytes)):
                raise self.fail("numpy array state is not the one numpy writes for numeric arrays")
            target.array = self.array(state[4], state[2], state[1], fortran=state[3])
            self.push(target.array)
        else:
            raise self.fail("pickle BUILD on something other than a numpy array or dtype")


def _check_tree(value: Any, parser: _Parser) -> None:
    """Refuse results holding placeholders, cycles or nesting deeper than MAX_DEPTH.

    Shared sub-values (memo references) are checked once: each container's height is
    computed once, so a "billion laughs" pickle costs its size, not its expansion.
    """
    heights: dict[int, int] = {}
    on_path: set[int] = set()

    def height(item: Any) -> int:
        if isinstance(item, (bytes, str, int, float, bool, type(None), np.ndarray)):
            return 0
        if not isinstance(item, (tuple, list)):
            raise parser.fail(f"pickle result holds a {type(item).__name__.lstrip('_')}, not plain data")
        if id(item) in heights:
            return heights[id(item)]
        if id(item) in on_path or len(on_path) >= MAX_DEPTH:
            raise parser.fail(f"pickle result nests deeper than {MAX_DEPTH} levels or refers to itself")
        on_path.add(id(item))
        heights[id(item)] = 1 + max(map(height, item), default=0)
        on_path.discard(id(item))
        return heights[id(item)]

    height(value)


def _tuple_of(count: int):
    def handler(p: _Parser) -> None:
        items = [p.pop() for _ in range(count)][::-1]
        p.push(tuple(items))
    return handler


def _mark(p: _Parser) -> None:
    if len(p.marks) >= MAX_DEPTH:
        raise p.fail(f"pickle nests deeper than {MAX_DEPTH} levels")
    p.marks.append(p.stack)
    p.stack = []


def _extend(p: _Parser, items: list[Any]) -> None:
    """APPEND / APPENDS: add items to the list below them on the stack."""
    target = p.pop()
    if not isinstance(target, list):
        raise p.fail("pickle appends to something other than a list")
    target.extend(items)
    p.push(target)


def _text(p: _Parser, fmt: str) -> str:
    return str(p.take(p.unpack(fmt)), "utf-8")


def _stack_global(p: _Parser) -> None:
    name = p.pop()
    module = p.pop()
    if not isinstance(module, str) or not isinstance(name, str):
        raise p.fail("pickle STACK_GLOBAL on non-strings")
    p.global_(module, name)


def _global(p: _Parser) -> None:
    module = _line(p)
    name = _line(p)
    p.global_(module, name)


def _line(p: _Parser) -> str:
    end = bytes(p.data[p.pos:p.pos + 256]).find(b"\n")
    if end < 0:
        raise p.fail("pickle GLOBAL name is unterminated or too long")
    return str(p.take(end + 1)[:-1], "ascii")


def _stop(p: _Parser) -> bool:
    return True


def _frame(p: _Parser) -> None:
    p.unpack("<Q")  # frame length: a hint for buffering, irrelevant to a parser of whole values


def _nothing(p: _Parser) -> None:
    return None


_HANDLERS = {
    ord("."): _stop,
    0x95: _frame,
    ord("("): _mark,
    ord("]"): lambda p: p.push([]),
    ord(")"): lambda p: p.push(()),
    ord("l"): lambda p: p.push(list(p.pop_mark())),
    ord("t"): lambda p: p.push(tuple(p.pop_mark())),
    0x85: _tuple_of(1),
    0x86: _tuple_of(2),
    0x87: _tuple_of(3),
    ord("a"): lambda p: _extend(p, [p.pop()]),
    ord("e"): lambda p: _extend(p, p.pop_mark()),
    ord("N"): lambda p: p.push(None),
    0x88: lambda p: p.push(True),
    0x89: lambda p: p.push(False),
    ord("K"): lambda p: p.push(p.unpack("<B")),
    ord("M"): lambda p: p.push(p.unpack("<H")),
    ord("J"): lambda p: p.push(p.unpack("<i")),
    0x8A: lambda p: p.push(int.from_bytes(p.take(p.unpack("<B")), "little", signed=True)),
    ord("G"): lambda p: p.push(p.unpack(">d")),
    ord("X"): lambda p: p.push(_text(p, "<I")),
    0x8C: lambda p: p.push(_text(p, "<B")),
    0x8D: lambda p: p.push(_text(p, "<Q")),
    ord("B"): lambda p: p.push(bytes(p.take(p.unpack("<I")))),
    ord("C"): lambda p: p.push(bytes(p.take(p.unpack("<B")))),
    0x8E: lambda p: p.push(bytes(p.take(p.unpack("<Q")))),
    0x96: lambda p: p.push(bytearray(p.take(p.unpack("<Q")))),
    ord("q"): lambda p: p.memo_put(p.unpack("<B")),
    ord("r"): lambda p: p.memo_put(p.unpack("<I")),
    0x94: lambda p: p.memo_put(len(p.memo)),
    ord("h"): lambda p: p.memo_get(p.unpack("<B")),
    ord("j"): lambda p: p.memo_get(p.unpack("<I")),
    ord("c"): _global,
    0x93: _stack_global,
    ord("R"): lambda p: p.reduce(),
    ord("b"): lambda p: p.build(),
}
