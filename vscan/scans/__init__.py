"""Scan orders: grid shape -> token visiting order (an index tensor) and its inverse.

>>> from vscan.scans import get_order
>>> get_order("cross").index((7, 13)).shape      # K=4 directions over a 7x13 grid
torch.Size([4, 91])

See :mod:`vscan.scans.orders` for the built-in orders and sets.
"""
from .base import ReversedOrder, ScanOrder, ScanOrderSet, as_shape, check_length
from .cls_token import ClsTokenOrder, cls_position, with_cls_token
from .hilbert import hilbert_permutation
from .orders import axis_order, local_windows
from .registry import as_order_set, get_order, list_orders, register_order
from .schedule import AlternatingSchedule, CyclicSchedule

__all__ = ["ScanOrder", "ScanOrderSet", "ReversedOrder", "ClsTokenOrder", "as_shape", "check_length",
           "with_cls_token", "cls_position", "hilbert_permutation", "axis_order", "local_windows",
           "as_order_set", "get_order", "list_orders", "register_order",
           "AlternatingSchedule", "CyclicSchedule"]
