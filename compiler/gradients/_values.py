"""Static attribute values of Relax calls as Python numbers, for the rules that need them."""


def number(expr):
    """A PrimValue, IntImm or FloatImm argument as a Python int or float."""
    value = expr
    while not isinstance(value, (int, float)):
        value = value.value
    return value


def numbers(tuple_expr):
    """A Relax tuple of PrimValues (strided_slice's axes, begin, end, strides) as Python numbers."""
    return [number(field) for field in tuple_expr.fields]
