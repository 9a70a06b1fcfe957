"""Writing datasets: :class:`LMDBWriter`, the image-folder converter, its worker pool, class
discovery and the signal handling that keeps an interrupted conversion resumable.
"""
