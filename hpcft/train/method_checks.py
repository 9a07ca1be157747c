"""Kept for the trainers that import `check_method` from here: the method rules live in `hpcft.methods` (one rule
function per method, named by `hpcft.schema.METHOD_SPECS`) and run at submit through `hpcft.config.validate`."""

from hpcft.methods import check_method

__all__ = ["check_method"]
