"""Ships flashinfer_triton_alias.pth at the top of site-packages (everything else is in pyproject.toml).

The .pth line turns the opt-in ``flashinfer`` alias on at interpreter start when
FLASHINFER_TRITON_ALIAS=1, so an engine's worker processes get it too; it imports nothing else.
"""

import os

from setuptools import setup
from setuptools.command.build_py import build_py

PTH = "flashinfer_triton_alias.pth"


class BuildPyWithPth(build_py):
    def run(self):
        super().run()
        self.copy_file(PTH, os.path.join(self.build_lib, PTH), preserve_mode=0)

    def get_outputs(self, include_bytecode=1):
        return super().get_outputs(include_bytecode) + [os.path.join(self.build_lib, PTH)]


setup(cmdclass={"build_py": BuildPyWithPth})
