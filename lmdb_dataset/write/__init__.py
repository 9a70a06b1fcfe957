"""Writing datasets: :class:`LMDBWriter`, the image-folder converter, its worker pool, class
discovery, opt-in storage shaping (``max_side``) and the signal handling that keeps an interrupted conversion resumable.
"""
