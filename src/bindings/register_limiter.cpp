// Python bindings of the in-process rate limiter: a module-level registry of named
// limiter tables (one per process per name, like the L1 store registry) and their check.
#include <pybind11/stl.h>

#include <cmath>
#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <new>
#include <stdexcept>
#include <string>
#include <string_view>
#include <utility>

#include "bindings/bound.hpp"
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

// A table's configuration, checked: each shard must hold a few entries (about 200 bytes
// each), or every new key would be decided without being kept.
LimiterConfig limiter_config(std::size_t max_bytes, unsigned shards) {
    if (shards < 1 || shards > 1024) throw py::value_error("shards must be between 1 and 1024");
    unsigned rounded = 1;
    while (rounded < shards) rounded <<= 1;
    if (max_bytes < 1024 || max_bytes / rounded < 1024)
        throw py::value_error(
            "max_bytes must be at least 1024 per shard (shards rounded up to a "
            "power of two)");
    return LimiterConfig{max_bytes, shards};
}

std::shared_ptr<Limiter> get_limiter(const std::string& name, std::size_t max_bytes,
                                     unsigned shards) {
    const LimiterConfig config = limiter_config(max_bytes, shards);
    std::lock_guard<std::mutex> lock(registry_mu);
    auto it = registry.find(name);
    if (it != registry.end()) return it->second;
    auto limiter = std::make_shared<Limiter>(config);
    registry.emplace(name, limiter);
    return limiter;
}

// The throttle's per-request call, check(key, policy, cost, now), as a plain METH_FASTCALL
// builtin bound to one table: pybind11's general dispatcher, its seven converted arguments
// and a Python-built result cost several times the check itself. It reads the policy's
// integers from the Python Policy tuple and returns the Python Decision tuple directly.
struct Checker {
    static constexpr const char* kCapsuleName = "fastcache.Checker";
    std::shared_ptr<Limiter> limiter;
    PyObject* decision_type = nullptr;  // a tuple subclass of 6 fields (owned)
    PyObject* source = nullptr;         // the Decision's last field (owned)
    ~Checker() {
        Py_XDECREF(decision_type);
        Py_XDECREF(source);
    }
};

// Positions in django_fastcache.limiter.Policy (rate, algorithm, code, burst, name,
// limit, period_us); test_throttling_fastpath.py pins them.
constexpr Py_ssize_t kPolicyCode = 2, kPolicyBurst = 3, kPolicyName = 4, kPolicyLimit = 5,
                     kPolicyPeriod = 6, kPolicySize = 7;

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

// A str key's UTF-8 text (valid while the str lives); false with a Python error set.
bool key_of(PyObject* key_obj, std::string_view& out) {
    Py_ssize_t len = 0;
    const char* key = PyUnicode_Check(key_obj) ? PyUnicode_AsUTF8AndSize(key_obj, &len) : nullptr;
    if (!key) {
        if (!PyErr_Occurred()) PyErr_SetString(PyExc_TypeError, "key must be a str");
        return false;
    }
    out = std::string_view(key, static_cast<std::size_t>(len));
    return true;
}

// The core policy of a limiter.Policy tuple (its scope is the tuple's name, valid while
// the tuple lives); false with a Python error set.
bool policy_of(PyObject* policy, Policy& out) {
    if (!PyTuple_Check(policy) || PyTuple_GET_SIZE(policy) != kPolicySize) {
        PyErr_SetString(PyExc_TypeError, "policy must be a django_fastcache.limiter.Policy");
        return false;
    }
    std::int64_t code, burst, limit, period_us;
    if (!int64_of(PyTuple_GET_ITEM(policy, kPolicyCode), code, "policy.code") ||
        !int64_of(PyTuple_GET_ITEM(policy, kPolicyBurst), burst, "policy.burst") ||
        !int64_of(PyTuple_GET_ITEM(policy, kPolicyLimit), limit, "policy.limit") ||
        !int64_of(PyTuple_GET_ITEM(policy, kPolicyPeriod), period_us, "policy.period_us"))
        return false;
    if (code < 0 || code > 3) {
        PyErr_SetString(PyExc_ValueError, "unknown algorithm");
        return false;
    }
    PyObject* name = PyTuple_GET_ITEM(policy, kPolicyName);
    Py_ssize_t len = 0;
    const char* scope = PyUnicode_Check(name) ? PyUnicode_AsUTF8AndSize(name, &len) : nullptr;
    if (!scope) {
        if (!PyErr_Occurred()) PyErr_SetString(PyExc_TypeError, "policy.name must be a str");
        return false;
    }
    out = Policy{static_cast<Algorithm>(code), limit, period_us, burst,
                 std::string_view(scope, static_cast<std::size_t>(len))};
    return true;
}

// Runs `fn` (a core call), mapping its exceptions to Python ones; false with an error set.
template <class Fn>
bool core_call(Fn&& fn) {
    try {
        fn();
        return true;
    } catch (const std::invalid_argument& e) {
        PyErr_SetString(PyExc_ValueError, e.what());
    } catch (const std::bad_alloc&) {
        PyErr_NoMemory();
    } catch (const std::exception& e) {
        PyErr_SetString(PyExc_RuntimeError, e.what());
    }
    return false;
}

// One check of `cost` units for `key` under `policy` (a Policy tuple) at `now` (seconds),
// returned as a new decision_type(allowed, remaining, retry_after_us, reset_after_us,
// policy, source); nullptr with a Python error set on failure.
PyObject* check_to_decision(Limiter& limiter, PyObject* decision_type, PyObject* source,
                            PyObject* key_obj, PyObject* policy, PyObject* cost_obj,
                            PyObject* now) {
    std::string_view key;
    Policy p;
    std::int64_t cost, now_us;
    if (!key_of(key_obj, key) || !policy_of(policy, p) || !int64_of(cost_obj, cost, "cost") ||
        !now_us_of(now, now_us))
        return nullptr;
    fastcache::limiter::Decision d;
    if (!core_call([&] { d = limiter.hit(key, p, cost, now_us); })) return nullptr;
    auto* type = reinterpret_cast<PyTypeObject*>(decision_type);
    PyObject* out = type->tp_alloc(type, 6);
    if (!out) return nullptr;
    PyObject* remaining = PyLong_FromLongLong(d.remaining);
    PyObject* retry = PyLong_FromLongLong(d.retry_after_us);
    PyObject* reset = PyLong_FromLongLong(d.reset_after_us);
    PyObject* allowed = d.allowed ? Py_True : Py_False;
    Py_INCREF(allowed);
    Py_INCREF(policy);
    Py_INCREF(source);
    PyTuple_SET_ITEM(out, 0, allowed);
    PyTuple_SET_ITEM(out, 1, remaining);
    PyTuple_SET_ITEM(out, 2, retry);
    PyTuple_SET_ITEM(out, 3, reset);
    PyTuple_SET_ITEM(out, 4, policy);
    PyTuple_SET_ITEM(out, 5, source);
    if (!remaining || !retry || !reset) {
        Py_DECREF(out);  // tuple deallocation skips the NULL slots
        return nullptr;
    }
    return out;
}

PyObject* fast_check(PyObject* capsule, PyObject* const* args, Py_ssize_t nargs) {
    if (nargs != 4) {
        PyErr_Format(PyExc_TypeError, "check(key, policy, cost, now) takes 4 arguments (%zd given)",
                     nargs);
        return nullptr;
    }
    auto* c = bound_state<Checker>(capsule);
    if (!c) return nullptr;
    return check_to_decision(*c->limiter, c->decision_type, c->source, args[0], args[1], args[2],
                             args[3]);
}

PyMethodDef fast_check_def = {
    "check", reinterpret_cast<PyCFunction>(reinterpret_cast<void (*)()>(&fast_check)),
    METH_FASTCALL,
    "check(key, policy, cost, now): one atomic check of `cost` units for `key` under `policy` "
    "(a limiter.Policy) at `now` seconds; returns the Decision."};

py::object make_checker(std::shared_ptr<Limiter> limiter, py::object decision_type,
                        py::object source) {
    if (!PyType_Check(decision_type.ptr()) ||
        !PyType_IsSubtype(reinterpret_cast<PyTypeObject*>(decision_type.ptr()), &PyTuple_Type))
        throw py::type_error("decision_type must be a tuple subclass");
    auto c = std::make_unique<Checker>();
    c->limiter = std::move(limiter);
    c->decision_type = decision_type.inc_ref().ptr();
    c->source = source.inc_ref().ptr();
    return bind_builtins(std::move(c), {&fast_check_def})[0];
}

// Python's (allowed, remaining, retry_after_us, reset_after_us) of a core decision.
py::tuple decision_tuple(const fastcache::limiter::Decision& d) {
    return py::make_tuple(d.allowed, d.remaining, d.retry_after_us, d.reset_after_us);
}

// Runs a core call taking (key, policy, ...) from Python objects; throws the Python error.
template <class Fn>
auto with_policy(py::handle key_obj, py::handle policy_obj, Fn&& fn) {
    std::string_view key;
    Policy p;
    if (!key_of(key_obj.ptr(), key) || !policy_of(policy_obj.ptr(), p))
        throw py::error_already_set();
    decltype(fn(key, p)) out{};
    if (!core_call([&] { out = fn(key, p); })) throw py::error_already_set();
    return out;
}

}  // namespace

void register_limiter(py::module_& m) {
    py::class_<Limiter, std::shared_ptr<Limiter>>(m, "Limiter")
        .def(py::init([](std::size_t max_bytes, unsigned shards) {
                 return std::make_shared<Limiter>(limiter_config(max_bytes, shards));
             }),
             py::arg("max_bytes") = std::size_t{64} << 20, py::arg("shards") = 16)
        .def(
            "hit",
            [](Limiter& self, std::string_view key, int algorithm, std::int64_t limit,
               std::int64_t period_us, std::int64_t burst, std::int64_t cost, std::int64_t now_us,
               std::string_view scope) {
                if (algorithm < 0 || algorithm > 3) throw py::value_error("unknown algorithm");
                Policy p{static_cast<Algorithm>(algorithm), limit, period_us, burst, scope};
                auto d = self.hit(key, p, cost, now_us);
                return py::make_tuple(d.allowed, d.remaining, d.retry_after_us, d.reset_after_us,
                                      d.untracked);
            },
            py::arg("key"), py::arg("algorithm"), py::arg("limit"), py::arg("period_us"),
            py::arg("burst"), py::arg("cost"), py::arg("now_us"), py::arg("scope") = "",
            "One atomic check; returns (allowed, remaining, retry_after_us, reset_after_us, "
            "untracked).")
        .def("checker", &make_checker, py::arg("decision_type"), py::arg("source"),
             "A builtin check(key, policy, cost, now) on this table returning "
             "decision_type(allowed, remaining, retry_after_us, reset_after_us, policy, source).")
        .def(
            "peek",
            [](Limiter& self, py::handle key, py::handle policy, py::handle now,
               std::int64_t cost) {
                std::int64_t now_us = 0;
                if (!now_us_of(now.ptr(), now_us)) throw py::error_already_set();
                auto d = with_policy(key, policy, [&](std::string_view k, const Policy& p) {
                    return self.peek(k, p, cost, now_us);
                });
                return decision_tuple(d);
            },
            py::arg("key"), py::arg("policy"), py::arg("now"), py::arg("cost") = 1,
            "The check of `cost` units for `key` under `policy` (a limiter.Policy) at `now` "
            "seconds, recording nothing: (allowed, remaining, retry_after_us, reset_after_us), "
            "`remaining` being what is left now.")
        .def(
            "history",
            [](Limiter& self, py::handle key, py::handle policy, py::handle now) {
                std::int64_t now_us = 0;
                if (!now_us_of(now.ptr(), now_us)) throw py::error_already_set();
                auto times = with_policy(key, policy, [&](std::string_view k, const Policy& p) {
                    return self.history(k, p, now_us);
                });
                py::list out(times.size());
                for (std::size_t i = 0; i < times.size(); ++i)
                    out[i] = py::float_(static_cast<double>(times[i]) / 1e6);
                return out;
            },
            py::arg("key"), py::arg("policy"), py::arg("now"),
            "The sliding log of `key` under `policy` at `now` seconds: its request times in "
            "seconds (to the microsecond), newest first, one per unit of cost; [] for another "
            "algorithm. Records nothing.")
        .def(
            "reset",
            [](Limiter& self, py::handle key, py::handle policy) -> std::size_t {
                if (policy.is_none()) {
                    std::string_view k;
                    if (!key_of(key.ptr(), k)) throw py::error_already_set();
                    return self.reset(k);
                }
                return with_policy(key, policy, [&](std::string_view k, const Policy& p) {
                    return static_cast<std::size_t>(self.reset(k, p));
                });
            },
            py::arg("key"), py::arg("policy") = py::none(),
            "Drops the state of `key` under `policy` (a limiter.Policy: its scope, algorithm and "
            "period), or under every policy when None; returns how many states were dropped.")
        .def("clear", &Limiter::clear)
        .def_property_readonly("max_bytes",
                               [](const Limiter& self) { return self.config().max_bytes; })
        .def_property_readonly("shards", [](const Limiter& self) { return self.config().shards; })
        .def("stats", [](const Limiter& self) {
            auto s = self.stats();
            py::dict d;
            d["checks"] = s.checks;
            d["allowed"] = s.allowed;
            d["denied"] = s.denied;
            d["evictions"] = s.evictions;
            d["dropped_live"] = s.dropped_live;
            d["untracked"] = s.untracked;
            d["keys"] = s.keys;
            d["bytes"] = s.bytes;
            d["pinned_keys"] = s.pinned_keys;
            d["pinned_bytes"] = s.pinned_bytes;
            return d;
        });

    m.def("get_limiter", &get_limiter, py::arg("name"),
          py::arg("max_bytes") = std::size_t{64} << 20, py::arg("shards") = 16,
          "The process-wide limiter table named `name`, created with this configuration on "
          "first use (later configurations of the same name are ignored).");
}

}  // namespace fastcache::bindings
