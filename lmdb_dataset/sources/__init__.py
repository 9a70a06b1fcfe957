"""Sources the converter reads besides an ImageFolder tree: legacy LMDBs, tar archives, list files, HDF5.

Values stored by older tools are decoded by parsers that never execute anything:
:mod:`.safe_pickle` (a pickle opcode parser), :mod:`.msgpack_values` (msgpack-numpy without
its hooks) and :mod:`.caffe` (Caffe ``Datum`` protobufs).
"""
