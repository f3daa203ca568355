// Builtins bound to C++ state: a hot call exposed as a METH_FASTCALL function whose `self`
// is a capsule owning the state, so each call skips pybind11's general dispatcher (which
// costs about as much as a cache hit). The capsule deletes the state when the last
// builtin goes (with the GIL held), so a state's destructor may release Python references.
#pragma once

#include <pybind11/pybind11.h>

#include <initializer_list>
#include <memory>
#include <vector>

namespace fastcache::bindings {

// The state behind a bound builtin's `self`; State::kCapsuleName names its capsule.
template <class State>
State* bound_state(PyObject* capsule) {
    return static_cast<State*>(PyCapsule_GetPointer(capsule, State::kCapsuleName));
}

// One builtin per method definition, all sharing `state`.
template <class State>
std::vector<pybind11::object> bind_builtins(std::unique_ptr<State> state,
                                            std::initializer_list<PyMethodDef*> defs) {
    PyObject* capsule = PyCapsule_New(state.get(), State::kCapsuleName,
                                      [](PyObject* cap) { delete bound_state<State>(cap); });
    if (!capsule) throw pybind11::error_already_set();
    state.release();  // the capsule owns it now
    auto owner = pybind11::reinterpret_steal<pybind11::object>(capsule);
    std::vector<pybind11::object> out;
    for (PyMethodDef* def : defs) {
        PyObject* fn = PyCFunction_NewEx(def, capsule, nullptr);
        if (!fn) throw pybind11::error_already_set();
        out.push_back(pybind11::reinterpret_steal<pybind11::object>(fn));
    }
    return out;
}

}  // namespace fastcache::bindings
