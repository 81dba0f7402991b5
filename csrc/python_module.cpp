// `import restore_ext._C` loads the op library, whose static initialisers run the registrations; the
// module has no Python functions (ops are reached through torch.ops.restore.*). Not part of the CMake
// build, which serves C++ users without Python.
#include <Python.h>

extern "C" PyObject* PyInit__C(void) {
  static struct PyModuleDef module_def = {PyModuleDef_HEAD_INIT, "_C", nullptr, -1, nullptr};
  return PyModule_Create(&module_def);
}
