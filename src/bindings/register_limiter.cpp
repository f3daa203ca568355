// Python bindings of the in-process rate limiter: a module-level registry of named
// limiter tables (one per process per name, like the L1 store registry) and their check.
#include <cmath>
#include <cstdint>
#include <map>
#include <memory>
#include <new>
#include <mutex>
#include <stdexcept>
#include <string>
#include <string_view>

#include <pybind11/stl.h>

#include "bindings/registry.hpp"
#include "core/limiter.hpp"

namespace py = pybind11;
using fastcache::limiter::Algorithm;
using fastcache::limiter::Limiter;
using fastcache::limiter::LimiterConfig;
using fastcache::limiter::Policy;

namespace fastcache::bindings {

namespace {

std::mutex registry_mu;
// Leaked on purpose: tables live for the process and must not be destroyed after the
// interpreter has gone (limiters hold no Python objects, so leaking is harmless).
auto& registry = *new std::map<std::string, std::shared_ptr<Limiter>, std::less<>>();

std::shared_ptr<Limiter> get_limiter(const std::string& name, std::size_t max_bytes,
                                     unsigned shards) {
    if (max_bytes < 1024) throw py::value_error("max_bytes must be at least 1024");
    if (shards < 1 || shards > 1024) throw py::value_error("shards must be between 1 and 1024");
    std::lock_guard<std::mutex> lock(registry_mu);
    auto it = registry.find(name);
    if (it != registry.end()) return it->second;
    auto limiter = std::make_shared<Limiter>(LimiterConfig{max_bytes, shards});
    registry.emplace(name, limiter);
    return limiter;
}

// The throttle's per-request call, check(key, policy, cost, now), as a plain METH_FASTCALL
// builtin bound to one table: pybind11's general dispatcher, its seven converted arguments
// and a Python-built result cost several times the check itself. It reads the policy's
// integers from the Python Policy tuple and returns the Python Decision tuple directly.
struct Checker {
    std::shared_ptr<Limiter> limiter;
    PyObject* decision_type;  // a tuple subclass of 6 fields (owned)
    PyObject* source;         // the Decision's last field (owned)
};

// Positions in django_fastcache.limiter.Policy (rate, algorithm, code, burst, name,
// limit, period_us); test_throttling_fastpath.py pins them.
constexpr Py_ssize_t kPolicyCode = 2, kPolicyBurst = 3, kPolicyLimit = 5, kPolicyPeriod = 6,
                     kPolicySize = 7;

bool int64_of(PyObject* o, std::int64_t& out, const char* what) {
    if (!PyLong_Check(o)) {
        PyErr_Format(PyExc_TypeError, "%s must be an int, not %.100s", what, Py_TYPE(o)->tp_name);
        return false;
    }
    out = PyLong_AsLongLong(o);
    return !(out == -1 && PyErr_Occurred());
}

// Seconds (a float or an int, as time.time() or a fake timer gives) to integer
// microseconds exactly as Python's round(now * 1_000_000): half to even.
bool now_us_of(PyObject* o, std::int64_t& out) {
    if (PyLong_Check(o)) {
        std::int64_t s = PyLong_AsLongLong(o);
        if (s == -1 && PyErr_Occurred()) return false;
        if (s > INT64_MAX / 1000000 || s < INT64_MIN / 1000000) {
            PyErr_SetString(PyExc_OverflowError, "now is out of range");
            return false;
        }
        out = s * 1000000;
        return true;
    }
    double v = PyFloat_AsDouble(o);
    if (v == -1.0 && PyErr_Occurred()) return false;
    v = std::nearbyint(v * 1e6);
    if (!std::isfinite(v) || std::fabs(v) >= 9.2e18) {
        PyErr_SetString(PyExc_ValueError, "now must be a finite number of seconds");
        return false;
    }
    out = static_cast<std::int64_t>(v);
    return true;
}

PyObject* fast_check(PyObject* capsule, PyObject* const* args, Py_ssize_t nargs) {
    if (nargs != 4) {
        PyErr_Format(PyExc_TypeError, "check(key, policy, cost, now) takes 4 arguments (%zd given)",
                     nargs);
        return nullptr;
    }
    auto* c = static_cast<Checker*>(PyCapsule_GetPointer(capsule, "fastcache.Checker"));
    if (!c) return nullptr;
    Py_ssize_t key_len = 0;
    const char* key = PyUnicode_Check(args[0]) ? PyUnicode_AsUTF8AndSize(args[0], &key_len) : nullptr;
    if (!key) {
        if (!PyErr_Occurred()) PyErr_SetString(PyExc_TypeError, "key must be a str");
        return nullptr;
    }
    PyObject* policy = args[1];
    if (!PyTuple_Check(policy) || PyTuple_GET_SIZE(policy) != kPolicySize) {
        PyErr_SetString(PyExc_TypeError, "policy must be a django_fastcache.limiter.Policy");
        return nullptr;
    }
    std::int64_t code, burst, limit, period_us, cost, now_us;
    if (!int64_of(PyTuple_GET_ITEM(policy, kPolicyCode), code, "policy.code") ||
        !int64_of(PyTuple_GET_ITEM(policy, kPolicyBurst), burst, "policy.burst") ||
        !int64_of(PyTuple_GET_ITEM(policy, kPolicyLimit), limit, "policy.limit") ||
        !int64_of(PyTuple_GET_ITEM(policy, kPolicyPeriod), period_us, "policy.period_us") ||
        !int64_of(args[2], cost, "cost") || !now_us_of(args[3], now_us))
        return nullptr;
    if (code < 0 || code > 3) {
        PyErr_SetString(PyExc_ValueError, "unknown algorithm");
        return nullptr;
    }
    fastcache::limiter::Decision d;
    try {
        d = c->limiter->hit(std::string_view(key, static_cast<std::size_t>(key_len)),
                            Policy{static_cast<Algorithm>(code), limit, period_us, burst}, cost, now_us);
    } catch (const std::invalid_argument& e) {
        PyErr_SetString(PyExc_ValueError, e.what());
        return nullptr;
    } catch (const std::bad_alloc&) {
        return PyErr_NoMemory();
    } catch (const std::exception& e) {
        PyErr_SetString(PyExc_RuntimeError, e.what());
        return nullptr;
    }
    auto* type = reinterpret_cast<PyTypeObject*>(c->decision_type);
    PyObject* out = type->tp_alloc(type, 6);
    if (!out) return nullptr;
    PyObject* remaining = PyLong_FromLongLong(d.remaining);
    PyObject* retry = PyLong_FromLongLong(d.retry_after_us);
    PyObject* reset = PyLong_FromLongLong(d.reset_after_us);
    PyObject* allowed = d.allowed ? Py_True : Py_False;
    Py_INCREF(allowed);
    Py_INCREF(policy);
    Py_INCREF(c->source);
    PyTuple_SET_ITEM(out, 0, allowed);
    PyTuple_SET_ITEM(out, 1, remaining);
    PyTuple_SET_ITEM(out, 2, retry);
    PyTuple_SET_ITEM(out, 3, reset);
    PyTuple_SET_ITEM(out, 4, policy);
    PyTuple_SET_ITEM(out, 5, c->source);
    if (!remaining || !retry || !reset) {
        Py_DECREF(out);  // tuple deallocation skips the NULL slots
        return nullptr;
    }
    return out;
}

PyMethodDef fast_check_def = {
    "check", reinterpret_cast<PyCFunction>(reinterpret_cast<void (*)()>(&fast_check)), METH_FASTCALL,
    "check(key, policy, cost, now): one atomic check of `cost` units for `key` under `policy` "
    "(a limiter.Policy) at `now` seconds; returns the Decision."};

py::object make_checker(std::shared_ptr<Limiter> limiter, py::object decision_type, py::object source) {
    if (!PyType_Check(decision_type.ptr()) ||
        !PyType_IsSubtype(reinterpret_cast<PyTypeObject*>(decision_type.ptr()), &PyTuple_Type))
        throw py::type_error("decision_type must be a tuple subclass");
    auto* c = new Checker{std::move(limiter), decision_type.inc_ref().ptr(), source.inc_ref().ptr()};
    PyObject* capsule = PyCapsule_New(c, "fastcache.Checker", [](PyObject* cap) {
        auto* c = static_cast<Checker*>(PyCapsule_GetPointer(cap, "fastcache.Checker"));
        Py_DECREF(c->decision_type);
        Py_DECREF(c->source);
        delete c;
    });
    if (!capsule) {
        Py_DECREF(c->decision_type);
        Py_DECREF(c->source);
        delete c;
        throw py::error_already_set();
    }
    PyObject* fn = PyCFunction_NewEx(&fast_check_def, capsule, nullptr);
    Py_DECREF(capsule);
    if (!fn) throw py::error_already_set();
    return py::reinterpret_steal<py::object>(fn);
}

}  // namespace

void register_limiter(py::module_& m) {
    py::class_<Limiter, std::shared_ptr<Limiter>>(m, "Limiter")
        .def(py::init([](std::size_t max_bytes, unsigned shards) {
                 return std::make_shared<Limiter>(LimiterConfig{max_bytes, shards});
             }),
             py::arg("max_bytes") = std::size_t{64} << 20, py::arg("shards") = 16)
        .def(
            "hit",
            [](Limiter& self, std::string_view key, int algorithm, std::int64_t limit,
               std::int64_t period_us, std::int64_t burst, std::int64_t cost, std::int64_t now_us) {
                if (algorithm < 0 || algorithm > 3) throw py::value_error("unknown algorithm");
                Policy p{static_cast<Algorithm>(algorithm), limit, period_us, burst};
                auto d = self.hit(key, p, cost, now_us);
                return py::make_tuple(d.allowed, d.remaining, d.retry_after_us, d.reset_after_us,
                                      d.full);
            },
            py::arg("key"), py::arg("algorithm"), py::arg("limit"), py::arg("period_us"),
            py::arg("burst"), py::arg("cost"), py::arg("now_us"),
            "One atomic check; returns (allowed, remaining, retry_after_us, reset_after_us, full).")
        .def("checker", &make_checker, py::arg("decision_type"), py::arg("source"),
             "A builtin check(key, policy, cost, now) on this table returning "
             "decision_type(allowed, remaining, retry_after_us, reset_after_us, policy, source).")
        .def("reset", [](Limiter& self, std::string_view key) { return self.reset(key); })
        .def("clear", &Limiter::clear)
        .def_property_readonly("max_bytes", [](const Limiter& self) { return self.config().max_bytes; })
        .def_property_readonly("shards", [](const Limiter& self) { return self.config().shards; })
        .def("stats", [](const Limiter& self) {
            auto s = self.stats();
            py::dict d;
            d["checks"] = s.checks;
            d["allowed"] = s.allowed;
            d["denied"] = s.denied;
            d["evictions"] = s.evictions;
            d["rejected_full"] = s.rejected_full;
            d["keys"] = s.keys;
            d["bytes"] = s.bytes;
            return d;
        });

    m.def("get_limiter", &get_limiter, py::arg("name"), py::arg("max_bytes") = std::size_t{64} << 20,
          py::arg("shards") = 16,
          "The process-wide limiter table named `name`, created with this configuration on "
          "first use (later configurations of the same name are ignored).");
}

}  // namespace fastcache::bindings
