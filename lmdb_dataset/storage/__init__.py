"""The on-disk format and the read path below the datasets: the record format and metadata
(:mod:`storage.format`, the one place the format is documented), opened environments and their tables,
record reads, page-cache prefetching and the operating-system calls they need.
"""
