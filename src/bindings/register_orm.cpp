// The ORM cache's rebuild of model instances from stored attribute dicts: what a hit
// spends once the L1 has handed the dicts back (python/django_fastcache/orm/query.py).
#include <pybind11/pybind11.h>

#include "bindings/registry.hpp"

namespace py = pybind11;

namespace fastcache::bindings {
namespace {

// instances(cls, state_cls, db, dicts) -> list: for each dict d (owned by the caller, a
// fresh copy), as unpickling does: d["_state"] = a new state_cls whose __dict__ is
// {"db": db, "adding": False}, then cls.__new__(cls) with d as its __dict__. Neither
// class's __init__ runs: the caller checks that neither overrides __new__ or __init__ in
// a way that matters (Django's ModelState has none) and that the model may be rebuilt so.
py::list instances(py::handle cls, py::handle state_cls, py::handle db, py::handle dicts) {
    if (!PyType_Check(cls.ptr()) || !PyType_Check(state_cls.ptr())) {
        throw py::type_error("instances(): cls and state_cls must be classes");
    }
    if (!PyList_Check(dicts.ptr())) throw py::type_error("instances(): dicts must be a list");
    static py::handle s_state = py::str("_state").release();
    auto* type = reinterpret_cast<PyTypeObject*>(cls.ptr());
    auto* state_type = reinterpret_cast<PyTypeObject*>(state_cls.ptr());
    py::tuple no_args(0);
    py::dict proto;
    proto["db"] = db;
    proto["adding"] = py::bool_(false);
    Py_ssize_t n = PyList_GET_SIZE(dicts.ptr());
    py::list out(n);
    for (Py_ssize_t i = 0; i < n; ++i) {
        PyObject* d = PyList_GET_ITEM(dicts.ptr(), i);
        if (!PyDict_CheckExact(d)) throw py::type_error("instances(): dicts must hold dicts");
        py::object state = py::reinterpret_steal<py::object>(
            PyBaseObject_Type.tp_new(state_type, no_args.ptr(), nullptr));
        py::object state_dict = py::reinterpret_steal<py::object>(PyDict_Copy(proto.ptr()));
        if (!state || !state_dict ||
            PyObject_GenericSetDict(state.ptr(), state_dict.ptr(), nullptr) < 0 ||
            PyDict_SetItem(d, s_state.ptr(), state.ptr()) < 0) {
            throw py::error_already_set();
        }
        py::object obj = py::reinterpret_steal<py::object>(
            PyBaseObject_Type.tp_new(type, no_args.ptr(), nullptr));
        if (!obj || PyObject_GenericSetDict(obj.ptr(), d, nullptr) < 0) {
            throw py::error_already_set();
        }
        PyList_SET_ITEM(out.ptr(), i, obj.release().ptr());
    }
    return out;
}

}  // namespace

void register_orm(py::module_& m) {
    m.def("instances", &instances, py::arg("cls"), py::arg("state_cls"), py::arg("db"),
          py::arg("dicts"),
          "Model instances from attribute dicts, built as unpickling does (no __init__).");
}

}  // namespace fastcache::bindings
