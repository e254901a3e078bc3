/* A Python module in name only: the extension is built and installed like any other (setuptools, wheels, editable
   installs), and onnxcomp.kernels.native finds its file to hand to SessionOptions.register_custom_ops_library. */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_native", "onnxcomp's onnxruntime custom-op library",
                                    -1, nullptr, nullptr, nullptr, nullptr, nullptr};

extern "C" PyMODINIT_FUNC PyInit__native(void) { return PyModule_Create(&module); }
