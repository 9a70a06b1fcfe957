from setuptools import Extension, setup

# Optional: region decoding of JPEGs (lmdb_dataset.decode.crop) with the system's libjpeg-turbo
# (Debian/Ubuntu: libjpeg62-turbo-dev or libjpeg-turbo8-dev; Fedora: libjpeg-turbo-devel). Without its
# headers the build of this piece fails, pip says so, and the package decodes whole JPEGs as before.
setup(ext_modules=[Extension("lmdb_dataset.decode._jpeg_region", ["lmdb_dataset/decode/_jpeg_region.c"],
                             libraries=["jpeg"], optional=True)])
