from setuptools import Extension, setup

# Optional: region decoding of JPEGs (lmdb_dataset.decode.crop) with the system's libjpeg-turbo
# (Debian/Ubuntu: libjpeg62-turbo-dev or libjpeg-turbo8-dev; Fedora: libjpeg-turbo-devel). Without its
# headers the build of this piece fails, pip says so, and the package decodes whole JPEGs as before.
# Optional too: NormalizeBatch's one-pass kernel on the CPU (no library; without a C compiler torch ops do it).
setup(ext_modules=[Extension("lmdb_dataset.decode._jpeg_region", ["lmdb_dataset/decode/_jpeg_region.c"],
                             libraries=["jpeg"], optional=True),
                   Extension("lmdb_dataset.decode._normalize", ["lmdb_dataset/decode/_normalize.c"],
                             extra_compile_args=["-ffp-contract=off"], optional=True)])
