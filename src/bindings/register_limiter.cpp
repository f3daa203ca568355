// Python bindings of the in-process rate limiter: a module-level registry of named
// limiter tables (one per process per name, like the L1 store registry) and their check.
#include <cmath>
#include <cstdint>
#include <initializer_list>
#include <utility>
#include <map>
#include <memory>
#include <new>
#include <mutex>
#include <stdexcept>
#include <string>
#include <string_view>

#include <pybind11/stl.h>

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

// One check of `cost` units for `key` under `policy` (a Policy tuple) at `now` (seconds),
// returned as a new decision_type(allowed, remaining, retry_after_us, reset_after_us,
// policy, source); nullptr with a Python error set on failure.
PyObject* check_to_decision(Limiter& limiter, PyObject* decision_type, PyObject* source,
                            PyObject* key_obj, PyObject* policy, PyObject* cost_obj, PyObject* now) {
    Py_ssize_t key_len = 0;
    const char* key = PyUnicode_Check(key_obj) ? PyUnicode_AsUTF8AndSize(key_obj, &key_len) : nullptr;
    if (!key) {
        if (!PyErr_Occurred()) PyErr_SetString(PyExc_TypeError, "key must be a str");
        return nullptr;
    }
    if (!PyTuple_Check(policy) || PyTuple_GET_SIZE(policy) != kPolicySize) {
        PyErr_SetString(PyExc_TypeError, "policy must be a django_fastcache.limiter.Policy");
        return nullptr;
    }
    std::int64_t code, burst, limit, period_us, cost, now_us;
    if (!int64_of(PyTuple_GET_ITEM(policy, kPolicyCode), code, "policy.code") ||
        !int64_of(PyTuple_GET_ITEM(policy, kPolicyBurst), burst, "policy.burst") ||
        !int64_of(PyTuple_GET_ITEM(policy, kPolicyLimit), limit, "policy.limit") ||
        !int64_of(PyTuple_GET_ITEM(policy, kPolicyPeriod), period_us, "policy.period_us") ||
        !int64_of(cost_obj, cost, "cost") || !now_us_of(now, now_us))
        return nullptr;
    if (code < 0 || code > 3) {
        PyErr_SetString(PyExc_ValueError, "unknown algorithm");
        return nullptr;
    }
    fastcache::limiter::Decision d;
    try {
        d = limiter.hit(std::string_view(key, static_cast<std::size_t>(key_len)),
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
    "check", reinterpret_cast<PyCFunction>(reinterpret_cast<void (*)()>(&fast_check)), METH_FASTCALL,
    "check(key, policy, cost, now): one atomic check of `cost` units for `key` under `policy` "
    "(a limiter.Policy) at `now` seconds; returns the Decision."};

py::object make_checker(std::shared_ptr<Limiter> limiter, py::object decision_type, py::object source) {
    if (!PyType_Check(decision_type.ptr()) ||
        !PyType_IsSubtype(reinterpret_cast<PyTypeObject*>(decision_type.ptr()), &PyTuple_Type))
        throw py::type_error("decision_type must be a tuple subclass");
    auto c = std::make_unique<Checker>();
    c->limiter = std::move(limiter);
    c->decision_type = decision_type.inc_ref().ptr();
    c->source = source.inc_ref().ptr();
    return bind_builtins(std::move(c), {&fast_check_def})[0];}

// ------------------------------------------------------------ the throttles' fused path
//
// DRF builds a throttle per request; with the throttle's Python methods left as they are,
// construction and allow_request() come down to two builtins reading a per-class spec
// made in throttling.py (_spec_for): init(throttle) sets rate, num_requests, duration and
// policy; allow(throttle, request) does get_cache_key (anon or user), get_ident, timer()
// and the check, sets key, now and decision, and returns the allowed flag. A spec is valid
// while the class's type version tag is the one it was made under (CPython clears the tag
// when the class or a base is changed), and the rate it read from a rates dict is still
// there. Either builtin returns None before any side effect on the throttle when the spec
// does not apply (also for an instance with attributes of its own, a META that is not a
// dict, a non-str X-Forwarded-For): the caller then runs the Python path, which decides.

// Spec positions (throttling.py's _spec_for builds it; test_throttling_fused.py pins them).
constexpr Py_ssize_t kSpecTag = 0, kSpecMode = 1, kSpecRate = 2, kSpecNumRequests = 3,
                     kSpecDuration = 4, kSpecPolicy = 5, kSpecPrefix = 6, kSpecRates = 7,
                     kSpecScope = 8, kSpecCost = 9, kSpecSize = 10;
// Modes: the anon key (authenticated users pass), the user key, a rate of None (all pass).
constexpr long kModeAnon = 0, kModeUser = 1, kModeDisabled = 2;

struct Fastpath {
    static constexpr const char* kCapsuleName = "fastcache.Fastpath";
    ~Fastpath();
    std::shared_ptr<Limiter> limiter;
    PyObject* specs;          // dict: class -> spec tuple (owned)
    PyObject* decision_type;  // owned
    PyObject* source;         // owned
    PyObject* request_type;   // rest_framework.request.Request (owned)
    // rest_framework.settings.api_settings (owned): NUM_PROXIES and DEFAULT_THROTTLE_RATES
    // are read from it per request, as DRF does (its tests assign them on it directly).
    PyObject* api_settings;
};

struct Names {
    PyObject *rate, *num_requests, *duration, *policy, *key, *now, *decision, *user, *user_,
        *request_, *is_authenticated, *pk, *META, *timer, *strip, *xff, *remote_addr, *comma,
        *empty, *num_proxies, *default_rates;
};

Names* names() {
    static Names* n = [] {
        auto* n = new Names;  // interned for the process, like CPython's own identifiers
        auto s = [](const char* text) { return PyUnicode_InternFromString(text); };
        *n = Names{s("rate"), s("num_requests"), s("duration"), s("policy"), s("key"),
                   s("now"), s("decision"), s("user"), s("_user"), s("_request"),
                   s("is_authenticated"), s("pk"), s("META"), s("timer"), s("strip"),
                   s("HTTP_X_FORWARDED_FOR"), s("REMOTE_ADDR"), s(","), s(""),
                   s("NUM_PROXIES"), s("DEFAULT_THROTTLE_RATES")};
        return n;
    }();
    return n;
}

bool version_valid(PyTypeObject* t) {
#ifdef Py_TPFLAGS_VALID_VERSION_TAG
    if (!PyType_HasFeature(t, Py_TPFLAGS_VALID_VERSION_TAG)) return false;
#endif
    return t->tp_version_tag != 0;
}

// type(throttle)'s spec (a new reference) if it still describes the class; nullptr with no
// error set when it does not.
PyObject* live_spec(Fastpath* f, PyObject* self) {
    PyTypeObject* t = Py_TYPE(self);
    PyObject* spec = PyDict_GetItemWithError(f->specs, reinterpret_cast<PyObject*>(t));
    if (!spec || !PyTuple_CheckExact(spec) || PyTuple_GET_SIZE(spec) != kSpecSize ||
        !version_valid(t)) {
        PyErr_Clear();
        return nullptr;
    }
    unsigned long tag = PyLong_AsUnsignedLong(PyTuple_GET_ITEM(spec, kSpecTag));
    if (PyErr_Occurred() || tag != t->tp_version_tag) {
        PyErr_Clear();
        return nullptr;
    }
    PyObject* rates = PyTuple_GET_ITEM(spec, kSpecRates);
    if (rates != Py_None) {
        // The rate must still be the one read: THROTTLE_RATES may be changed in place, and
        // True stands for api_settings.DEFAULT_THROTTLE_RATES, which may be reassigned.
        PyObject* held = rates == Py_True ? PyObject_GetAttr(f->api_settings, names()->default_rates)
                                          : nullptr;
        PyObject* table = rates == Py_True ? held : rates;
        PyObject* rate = table && PyDict_Check(table)
                             ? PyDict_GetItemWithError(table, PyTuple_GET_ITEM(spec, kSpecScope))
                             : nullptr;
        Py_XDECREF(held);  // the spec holds the rate it compares with
        if (rate != PyTuple_GET_ITEM(spec, kSpecRate)) {
            PyErr_Clear();
            return nullptr;
        }
    }
    Py_INCREF(spec);
    return spec;
}

// Sets the results of `self.name = value` on a throttle whose class sets no attribute
// through descriptors or __setattr__ (the spec checked both).
bool set_all(PyObject* dict, std::initializer_list<std::pair<PyObject*, PyObject*>> items) {
    for (auto& [name, value] : items)
        if (PyDict_SetItem(dict, name, value) < 0) return false;
    return true;
}

PyObject* fast_init(PyObject* capsule, PyObject* const* args, Py_ssize_t nargs) {
    if (nargs != 1) {
        PyErr_SetString(PyExc_TypeError, "init(throttle) takes 1 argument");
        return nullptr;
    }
    auto* f = bound_state<Fastpath>(capsule);
    if (!f) return nullptr;
    PyObject* spec = live_spec(f, args[0]);
    if (!spec) Py_RETURN_FALSE;
    PyObject* dict = PyObject_GenericGetDict(args[0], nullptr);
    Names* n = names();
    bool ok = dict && set_all(dict, {{n->rate, PyTuple_GET_ITEM(spec, kSpecRate)},
                                     {n->num_requests, PyTuple_GET_ITEM(spec, kSpecNumRequests)},
                                     {n->duration, PyTuple_GET_ITEM(spec, kSpecDuration)},
                                     {n->policy, PyTuple_GET_ITEM(spec, kSpecPolicy)}});
    Py_XDECREF(dict);
    Py_DECREF(spec);
    if (!ok) return nullptr;
    Py_RETURN_TRUE;
}

// Python's getattr(obj, name, default) without running __getattr__ for an exact DRF
// Request (whose __getattr__ forwards to the wrapped request). New reference or nullptr.
PyObject* attr_or(PyObject* obj, PyObject* name, PyObject* fallback, bool generic) {
    PyObject* v = generic ? PyObject_GenericGetAttr(obj, name) : PyObject_GetAttr(obj, name);
    if (v || !PyErr_ExceptionMatches(PyExc_AttributeError)) return v;
    PyErr_Clear();
    Py_INCREF(fallback);
    return fallback;
}

// limiter.get_ident(request, num_proxies). New reference; nullptr with an error set on
// failure; `unusual` set (and nullptr, no error) when the Python path must decide.
PyObject* client_ident(Fastpath* f, PyObject* request, bool& unusual) {
    Names* n = names();
    PyObject* num_proxies = PyObject_GetAttr(f->api_settings, n->num_proxies);
    if (!num_proxies) return nullptr;
    bool trust_all = num_proxies == Py_None;  // DRF: the whole X-Forwarded-For, unsplit
    long proxies = -1;
    if (!trust_all) {
        proxies = PyLong_CheckExact(num_proxies) ? PyLong_AsLong(num_proxies) : -1;
        if (proxies < 0) PyErr_Clear();  // not a count (or a huge one): the Python path decides
    }
    Py_DECREF(num_proxies);
    if (!trust_all && proxies < 0) {
        unusual = true;
        return nullptr;
    }
    bool drf = Py_TYPE(request) == reinterpret_cast<PyTypeObject*>(f->request_type);
    PyObject* http = attr_or(request, n->request_, request, drf);
    if (!http) return nullptr;
    PyObject* meta = PyObject_GetAttr(http, n->META);
    Py_DECREF(http);
    if (!meta) return nullptr;
    if (!PyDict_CheckExact(meta)) {
        Py_DECREF(meta);
        unusual = true;
        return nullptr;
    }
    PyObject* xff = PyDict_GetItemWithError(meta, n->xff);
    PyObject* remote = xff || !PyErr_Occurred() ? PyDict_GetItemWithError(meta, n->remote_addr)
                                                : nullptr;
    if (PyErr_Occurred()) {
        Py_DECREF(meta);
        return nullptr;
    }
    if (!remote) remote = Py_None;
    if (xff == Py_None) xff = nullptr;
    if (xff && !PyUnicode_CheckExact(xff)) {
        Py_DECREF(meta);
        unusual = true;
        return nullptr;
    }
    Py_XINCREF(xff);
    Py_INCREF(remote);
    Py_DECREF(meta);  // the values are held: META may change under a Python call below
    PyObject* ident = nullptr;
    if (proxies >= 0) {
        if (proxies == 0 || !xff) {
            ident = remote;
            Py_INCREF(ident);
        } else {
            PyObject* addrs = PyUnicode_Split(xff, n->comma, -1);
            if (addrs) {
                Py_ssize_t len = PyList_GET_SIZE(addrs);
                Py_ssize_t back = proxies < len ? static_cast<Py_ssize_t>(proxies) : len;
                ident = PyObject_CallMethodNoArgs(PyList_GET_ITEM(addrs, len - back), n->strip);
                Py_DECREF(addrs);
            }
        }
    } else if (xff && PyUnicode_GET_LENGTH(xff) > 0) {
        PyObject* parts = PyUnicode_Split(xff, nullptr, -1);
        if (parts) {
            ident = PyUnicode_Join(n->empty, parts);
            Py_DECREF(parts);
        }
    } else {
        ident = remote;
        Py_INCREF(ident);
    }
    Py_XDECREF(xff);
    Py_DECREF(remote);
    return ident;
}

PyObject* allow_with(Fastpath* f, PyObject* spec, PyObject* self, PyObject* request) {
    Names* n = names();
    long mode = PyLong_AsLong(PyTuple_GET_ITEM(spec, kSpecMode));
    if (mode == -1 && PyErr_Occurred()) return nullptr;
    PyObject* dict = PyObject_GenericGetDict(self, nullptr);
    if (!dict) return nullptr;
    // Exactly what init() set, unchanged: anything else on the instance (a timer, a cache,
    // another rate) is the Python path's to honour.
    if (PyDict_GET_SIZE(dict) != 4 ||
        PyDict_GetItemWithError(dict, n->rate) != PyTuple_GET_ITEM(spec, kSpecRate) ||
        PyDict_GetItemWithError(dict, n->policy) != PyTuple_GET_ITEM(spec, kSpecPolicy)) {
        Py_DECREF(dict);
        if (PyErr_Occurred()) return nullptr;
        Py_RETURN_NONE;
    }
    if (mode == kModeDisabled) {
        Py_DECREF(dict);
        Py_RETURN_TRUE;
    }
    bool drf = Py_TYPE(request) == reinterpret_cast<PyTypeObject*>(f->request_type);
    PyObject* user = nullptr;
    if (drf) {
        // Request.user returns _user once authentication has run; else it authenticates.
        user = PyObject_GenericGetAttr(request, n->user_);
        if (!user && PyErr_ExceptionMatches(PyExc_AttributeError)) PyErr_Clear();
    }
    if (!user && !PyErr_Occurred()) user = PyObject_GetAttr(request, n->user);
    int authenticated = user ? PyObject_IsTrue(user) : -1;
    if (authenticated == 1) {
        PyObject* flag = PyObject_GetAttr(user, n->is_authenticated);
        authenticated = flag ? PyObject_IsTrue(flag) : -1;
        Py_XDECREF(flag);
    }
    PyObject* ident = nullptr;
    bool unusual = false;
    if (authenticated == 1) {
        if (mode == kModeAnon) {
            Py_DECREF(user);
            bool ok = PyDict_SetItem(dict, n->key, Py_None) == 0;
            Py_DECREF(dict);
            if (!ok) return nullptr;
            Py_RETURN_TRUE;
        }
        ident = PyObject_GetAttr(user, n->pk);
    } else if (authenticated == 0) {
        ident = client_ident(f, request, unusual);
    }
    Py_XDECREF(user);
    if (!ident) {
        Py_DECREF(dict);
        if (unusual) Py_RETURN_NONE;
        return nullptr;
    }
    // f"throttle_{scope}_{ident}": the prefix is made once per class.
    PyObject* text = PyObject_Format(ident, nullptr);
    Py_DECREF(ident);
    PyObject* key = text ? PyUnicode_Concat(PyTuple_GET_ITEM(spec, kSpecPrefix), text) : nullptr;
    Py_XDECREF(text);
    if (!key || PyDict_SetItem(dict, n->key, key) < 0) {
        Py_XDECREF(key);
        Py_DECREF(dict);
        return nullptr;
    }
    PyObject* now = PyObject_CallMethodNoArgs(self, n->timer);
    PyObject* decision = nullptr;
    if (now && PyDict_SetItem(dict, n->now, now) == 0)
        decision = check_to_decision(*f->limiter, f->decision_type, f->source, key,
                                     PyTuple_GET_ITEM(spec, kSpecPolicy),
                                     PyTuple_GET_ITEM(spec, kSpecCost), now);
    Py_XDECREF(now);
    Py_DECREF(key);
    bool ok = decision && PyDict_SetItem(dict, n->decision, decision) == 0;
    Py_DECREF(dict);
    if (!ok) {
        Py_XDECREF(decision);
        return nullptr;
    }
    PyObject* allowed = PyTuple_GET_ITEM(decision, 0);
    Py_INCREF(allowed);
    Py_DECREF(decision);
    return allowed;
}

PyObject* fast_allow(PyObject* capsule, PyObject* const* args, Py_ssize_t nargs) {
    if (nargs != 2) {
        PyErr_SetString(PyExc_TypeError, "allow(throttle, request) takes 2 arguments");
        return nullptr;
    }
    auto* f = bound_state<Fastpath>(capsule);
    if (!f) return nullptr;
    PyObject* spec = live_spec(f, args[0]);
    if (!spec) Py_RETURN_NONE;
    PyObject* out = allow_with(f, spec, args[0], args[1]);
    Py_DECREF(spec);
    return out;
}

Fastpath::~Fastpath() {
    Py_XDECREF(specs);
    Py_XDECREF(decision_type);
    Py_XDECREF(source);
    Py_XDECREF(request_type);
    Py_XDECREF(api_settings);
}

PyMethodDef fast_init_def = {
    "init", reinterpret_cast<PyCFunction>(reinterpret_cast<void (*)()>(&fast_init)), METH_FASTCALL,
    "init(throttle): sets the throttle's rate, num_requests, duration and policy from its "
    "class's spec; False when the spec does not apply."};
PyMethodDef fast_allow_def = {
    "allow", reinterpret_cast<PyCFunction>(reinterpret_cast<void (*)()>(&fast_allow)), METH_FASTCALL,
    "allow(throttle, request): the throttle's allow_request() in one call; None when the "
    "spec does not apply (nothing done)."};

py::tuple make_fastpath(std::shared_ptr<Limiter> limiter, py::dict specs, py::object decision_type,
                        py::object source, py::object request_type, py::object api_settings) {
    if (!PyType_Check(decision_type.ptr()) ||
        !PyType_IsSubtype(reinterpret_cast<PyTypeObject*>(decision_type.ptr()), &PyTuple_Type))
        throw py::type_error("decision_type must be a tuple subclass");
    if (!PyType_Check(request_type.ptr())) throw py::type_error("request_type must be a class");
    names();
    auto f = std::unique_ptr<Fastpath>(new Fastpath{
        std::move(limiter), specs.inc_ref().ptr(), decision_type.inc_ref().ptr(),
        source.inc_ref().ptr(), request_type.inc_ref().ptr(), api_settings.inc_ref().ptr()});
    std::vector<py::object> fns = bind_builtins(std::move(f), {&fast_init_def, &fast_allow_def});
    return py::make_tuple(fns[0], fns[1]);}

// The type version tag CPython keeps for its attribute cache, assigned now if it can be;
// 0 when the class has none (then no spec is made for it).
unsigned long type_version(py::type cls) {
    auto* t = reinterpret_cast<PyTypeObject*>(cls.ptr());
#if PY_VERSION_HEX >= 0x030C0000
    PyUnstable_Type_AssignVersionTag(t);
#else
    // A lookup through the attribute cache assigns the tag (to the bases first).
    static PyObject* probe = PyUnicode_InternFromString("allow_request");
    _PyType_Lookup(t, probe);
#endif
    return version_valid(t) ? t->tp_version_tag : 0;
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
        .def("throttle_fastpath", &make_fastpath, py::arg("specs"), py::arg("decision_type"),
             py::arg("source"), py::arg("request_type"), py::arg("api_settings"),
             "(init, allow): the throttles' fused per-request builtins on this table, reading "
             "per-class specs from `specs` (see django_fastcache.throttling).")
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

    m.def("type_version", &type_version, py::arg("cls"),
          "CPython's version tag of `cls` (changes whenever the class or a base is modified); "
          "0 when it has none.");
    m.def("get_limiter", &get_limiter, py::arg("name"), py::arg("max_bytes") = std::size_t{64} << 20,
          py::arg("shards") = 16,
          "The process-wide limiter table named `name`, created with this configuration on "
          "first use (later configurations of the same name are ignored).");
}

}  // namespace fastcache::bindings
