// _core.Store (a shared L1 store) and _core.Engine (one backend instance's view of it:
// key prefix, version, key function, default timeout), so that each Django cache call is
// one C++ call: build and validate the key, read the clock, touch the store, copy out.
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <cstdint>
#include <ctime>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <tuple>
#include <vector>

#include "bindings/bound.hpp"
#include "bindings/options.hpp"
#include "bindings/registry.hpp"
#include "bindings/values.hpp"
#include "core/coherence.hpp"
#include "core/keys.hpp"
#include "core/listener.hpp"
#include "core/store.hpp"

namespace py = pybind11;

namespace fastcache::bindings {

namespace {

void retain(void* h) noexcept { Py_INCREF(static_cast<PyObject*>(h)); }
void release(void* h) noexcept { Py_DECREF(static_cast<PyObject*>(h)); }
constexpr HandleOps kPyHandles{&retain, &release};

double wall_clock() {
    timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return static_cast<double>(ts.tv_sec) + static_cast<double>(ts.tv_nsec) * 1e-9;
}

// Handles the store gave up without releasing them (see core/coherence.hpp); GIL held.
void release_all(Released& handles) {
    for (void* h : handles) Py_DECREF(static_cast<PyObject*>(h));
    handles.clear();
}

// The coherent L1 of one store: its tokens and rules, and the native invalidation
// listener that feeds them (src/core/coherence.hpp, src/core/listener.hpp). Destroyed with
// the GIL held: the listener is stopped first, then what it buried is released.
struct L1 {
    explicit L1(std::shared_ptr<Store> s)
        : store(std::move(s)), coherence(*store), listener(coherence) {}
    ~L1() {
        Released released;
        listener.stop(released);
        release_all(released);
        bury_check();
    }
    // Releases what the listener gave up; cheap when there is nothing (GIL held).
    void bury_check() {
        if (coherence.buried()) {
            Released dead = coherence.exhume();
            release_all(dead);
        }
    }
    std::shared_ptr<Store> store;
    Coherence coherence;
    Listener listener;
};

// Every method is called with the GIL held, which makes retain/release safe.
class PyStore {
public:
    PyStore(std::size_t max_bytes, std::size_t max_entries, unsigned cull_frequency,
            unsigned shards)
        : store(std::make_shared<Store>(StoreConfig{max_bytes, max_entries, cull_frequency, shards},
                                        kPyHandles)),
          l1(std::make_shared<L1>(store)) {}
    std::shared_ptr<Store> store;
    std::shared_ptr<L1> l1;
};

std::string_view bytes_or_str(py::handle key, py::object& owner) {
    if (PyBytes_Check(key.ptr())) {
        return std::string_view(PyBytes_AS_STRING(key.ptr()), PyBytes_GET_SIZE(key.ptr()));
    }
    Py_ssize_t n;
    const char* s = PyUnicode_AsUTF8AndSize(key.ptr(), &n);
    if (!s) throw py::error_already_set();
    owner = py::reinterpret_borrow<py::object>(key);
    return std::string_view(s, n);
}

// A retained store value, released when it goes out of scope (GIL held).
struct Held {
    explicit Held(std::optional<Value> v) : value(v) {}
    ~Held() {
        if (value) Py_DECREF(static_cast<PyObject*>(value->handle));
    }
    Held(const Held&) = delete;
    Held& operator=(const Held&) = delete;
    std::optional<Value> value;
};

class Engine {
public:
    Engine(const PyStore& store, std::string key_prefix, py::object version, py::object key_func,
           py::object default_timeout, py::object default_sentinel, py::object key_warning,
           CodecOptions codec)
        : store_(store.store),
          l1_(store.l1),
          prefix_(std::move(key_prefix)),
          sentinel_(std::move(default_sentinel)),
          key_warning_(std::move(key_warning)),
          codec_(std::move(codec)) {
        set_version(version);
        set_key_func(std::move(key_func));
        set_default_timeout(default_timeout);
    }

    // --- configuration, mirrored from the backend's attributes (Django's tests set them)
    void set_prefix(std::string p) { prefix_ = std::move(p); }
    void set_version(py::handle v) { version_ = py::reinterpret_borrow<py::object>(v); }
    void set_key_func(py::object f) { key_func_ = f.is_none() ? py::object() : std::move(f); }
    void set_default_timeout(py::handle t) {
        default_timeout_ = t.is_none() ? std::nullopt : std::optional<double>(py::cast<double>(t));
    }
    void set_clock(py::object clock) { clock_ = clock.is_none() ? py::object() : std::move(clock); }

    // --- keys
    py::str make_key(py::handle key, py::handle version) {
        const std::string& k = key_of(key, version, false);
        return py::reinterpret_steal<py::str>(check(
            PyUnicode_DecodeUTF8(k.data(), static_cast<Py_ssize_t>(k.size()), "surrogatepass")));
    }
    void validate_key(py::handle key) {
        std::string k = utf8_of(key);
        warn(k, keys::check(k));
    }

    // --- for the shared tier: keys and values as Redis sees them
    py::str key(py::handle key, py::handle version) {
        const std::string& k = key_of(key, version);
        return py::reinterpret_steal<py::str>(check(
            PyUnicode_DecodeUTF8(k.data(), static_cast<Py_ssize_t>(k.size()), "surrogatepass")));
    }
    py::list keys_of(py::iterable keys, py::handle version) {
        py::list out;
        for (py::handle k : keys) out.append(key(k, version));
        return out;
    }
    py::bytes dumps(py::handle value) const { return encode(value, codec_); }
    py::object loads(py::bytes data) const {
        return decode(std::string_view(PyBytes_AS_STRING(data.ptr()), PyBytes_GET_SIZE(data.ptr())),
                      codec_);
    }
    // Seconds until expiry for the Redis PX argument: None (never), or a number <= 0
    // meaning "do not store" (Django's 0 and negative timeouts).
    py::object timeout_seconds(py::handle timeout) const {
        double t = 0;
        double e = expires_at(timeout, t);
        if (e == kNever) return py::none();
        return py::float_(e);
    }

    // --- the L1 in front of the shared tier, addressed by final keys (built by key())
    py::object l1_get(const std::string& final_key, py::handle default_) {
        Held held(store_->get(final_key, now()));
        if (!held.value) return py::reinterpret_borrow<py::object>(default_);
        return materialize(static_cast<PyObject*>(held.value->handle), held.value->tag);
    }
    void l1_set(const std::string& final_key, py::handle value, double seconds) {
        double t = now();
        if (seconds <= 0) {
            store_->erase(final_key, t);
            return;
        }
        Snapshot s = snapshot(value, codec_);
        store_->set(final_key, Value{s.object.ptr(), s.tag, s.charge}, t + seconds, t);
    }

    // --- the coherent L1 (core/coherence.hpp): tokens, guarded fills, local invalidation
    std::uint64_t l1_token(const std::string& final_key) const {
        return l1_->coherence.token(final_key);
    }
    // A value read from Redis under `token`: stored only if the L1 is usable and no other
    // fill, write or invalidation of the key's bucket came since. Returns whether it was.
    bool l1_fill(const std::string& final_key, py::handle value, double seconds,
                 std::uint64_t token) {
        l1_->bury_check();
        if (!l1_->coherence.usable()) return false;
        std::string key = final_key;  // snapshot() may run Python
        double t;
        Released released;
        bool stored;
        if (seconds <= 0) {  // expiring now: kept by no one, but the read still counts
            t = now();
            stored = l1_->coherence.write(key, nullptr, t, t, token, released);
        } else {
            Snapshot s = snapshot(value, codec_);
            t = now();
            stored = l1_->coherence.fill(key, Value{s.object.ptr(), s.tag, s.charge}, t + seconds,
                                         t, token, l1_max_item_, released);
        }
        release_all(released);
        return stored;
    }
    // After this process's own write to Redis returned: the written value replaces the
    // entry if no invalidation came since `token` (taken before the write was sent) and the
    // L1 is usable; otherwise the entry is dropped. The key's bucket is bumped either way.
    bool l1_write(const std::string& final_key, py::handle value, double seconds,
                  std::uint64_t token) {
        l1_->bury_check();
        std::string key = final_key;
        Snapshot s = snapshot(value, codec_);
        Value v{s.object.ptr(), s.tag, s.charge};
        const bool keep = seconds > 0 && s.charge <= l1_max_item_;
        double t = now();
        Released released;
        bool stored =
            l1_->coherence.write(key, keep ? &v : nullptr, t + seconds, t, token, released);
        release_all(released);
        return stored;
    }
    // After a write whose new value this process does not hold (delete, incr, touch, a
    // failed write): bump and drop, as an invalidation message would.
    void l1_invalidate(const std::string& final_key) {
        l1_->bury_check();
        Released released;
        l1_->coherence.invalidate(final_key, now(), released);
        release_all(released);
    }
    // Values whose decoded form is charged more than this are not kept in the coherent L1.
    void set_l1_max_item_bytes(std::size_t n) { l1_max_item_ = n; }

    // --- the Django API on the L1
    // A hit of the coherent L1, or nullptr (no exception set) when the caller must ask
    // Redis: the L1 is not usable (listener down) or holds no live entry for the key.
    PyObject* l1_hit(py::handle key, py::handle version) {
        l1_->bury_check();
        if (!l1_->coherence.usable()) return nullptr;
        const std::string& k = key_of(key, version);
        Held held(store_->get(k, now()));
        if (!held.value) return nullptr;
        return materialize(static_cast<PyObject*>(held.value->handle), held.value->tag)
            .release()
            .ptr();
    }

    py::object get(py::handle key, py::handle default_, py::handle version) {
        const std::string& k = key_of(key, version);
        Held held(store_->get(k, now()));
        if (!held.value) return py::reinterpret_borrow<py::object>(default_);
        return materialize(static_cast<PyObject*>(held.value->handle), held.value->tag);
    }

    void set(py::handle key, py::handle value, py::handle timeout, py::handle version) {
        // The key is built last: it lives in a per-thread buffer that any Python code run
        // in between (a __float__, a __reduce__, a clock) could reuse for another key.
        Snapshot s = snapshot(value, codec_);
        double t = now();
        double expires = expires_at(timeout, t);
        const std::string& k = key_of(key, version);
        if (expires <= t) {
            store_->erase(k, t);
            return;
        }
        store_->set(k, Value{s.object.ptr(), s.tag, s.charge}, expires, t);
    }

    bool add(py::handle key, py::handle value, py::handle timeout, py::handle version) {
        const std::string& k = key_of(key, version);
        double t = now();
        if (store_->contains(k, t)) return false;
        std::string kept = k;  // snapshot() may run pickle, which may build other keys
        Snapshot s = snapshot(value, codec_);
        double expires = expires_at(timeout, t);
        if (expires <= t) return !store_->contains(kept, t);
        return store_->add(kept, Value{s.object.ptr(), s.tag, s.charge}, expires, t);
    }

    bool touch(py::handle key, py::handle timeout, py::handle version) {
        double t = now();
        double expires = expires_at(timeout, t);
        const std::string& k = key_of(key, version);
        if (expires <= t) return store_->erase(k, t);
        return store_->touch(k, expires, t);
    }

    bool remove(py::handle key, py::handle version) {
        return store_->erase(key_of(key, version), now());
    }

    bool has_key(py::handle key, py::handle version) {
        return store_->contains(key_of(key, version), now());
    }

    py::dict get_many(py::iterable keys, py::handle version) {
        py::dict out;
        double t = now();
        for (py::handle key : keys) {
            Held held(store_->get(key_of(key, version), t));
            if (held.value) {
                out[key] = materialize(static_cast<PyObject*>(held.value->handle), held.value->tag);
            }
        }
        return out;
    }

    py::list set_many(py::dict data, py::handle timeout, py::handle version) {
        for (auto item : data) set(item.first, item.second, timeout, version);
        return py::list();
    }

    void delete_many(py::iterable keys, py::handle version) {
        double t = now();
        for (py::handle key : keys) store_->erase(key_of(key, version), t);
    }

    // Django's incr: ValueError when missing; the entry keeps its expiry. A builtin
    // delta is added to an immutable stored value under the shard lock. No Python code
    // may run there: it could switch threads while the lock is held, and a thread that
    // then waits for the lock holding the GIL deadlocks the process. Adding an exact
    // int/float/bool to any immutable stored builtin is C all the way (a result or a
    // TypeError); any other delta (say, one whose __radd__ is Python) and any other
    // stored form (a copy or an unpickle first) is read, added and written back, as
    // Django's BaseCache does.
    py::object incr(py::handle key, py::handle delta, py::handle version) {
        std::string k = key_of(key, version);
        double t = now();
        PyObject* d = delta.ptr();
        bool builtin_delta = PyLong_CheckExact(d) || PyFloat_CheckExact(d) || PyBool_Check(d);
        py::object result;
        bool found;
        try {
            found = store_->update(k, t, [&](const Value& old) -> Value {
                if (old.tag != kShared || !builtin_delta) throw NotInPlace{};
                PyObject* sum = PyNumber_Add(static_cast<PyObject*>(old.handle), delta.ptr());
                if (!sum) throw py::error_already_set();
                result = py::reinterpret_steal<py::object>(sum);
                Snapshot s = snapshot(result, codec_);
                // The store takes over one reference of the new handle.
                return Value{s.object.release().ptr(), s.tag, s.charge};
            });
        } catch (const NotInPlace&) {
            return incr_slow(k, key, delta, t);
        }
        if (!found)
            throw py::value_error("Key '" + py::str(key).cast<std::string>() + "' not found");
        return result;
    }

    // Remaining time to live like Redis PTTL: -2 when missing, -1 when it never expires.
    long long pttl(py::handle key, py::handle version) {
        double t = now();
        std::optional<double> e = store_->expiry(key_of(key, version), t);
        if (!e) return -2;
        if (*e == kNever) return -1;
        double ms = (*e - t) * 1000.0;
        return ms <= 0 ? 0 : static_cast<long long>(ms + 0.5);
    }

    // Sets an absolute expiry (None: never). False when the key is missing.
    bool expire_at(py::handle key, py::handle when, py::handle version) {
        double t = now();
        double e = when.is_none() ? kNever : py::cast<double>(when);
        const std::string& k = key_of(key, version);
        if (e <= t) return store_->erase(k, t);
        return store_->touch(k, e, t);
    }

    // Final keys matching a Redis-style glob over final keys.
    py::list keys(const std::string& pattern) {
        py::list out;
        for (const std::string& k : store_->keys(now())) {
            if (glob_match(pattern, k)) {
                out.append(py::reinterpret_steal<py::object>(check(PyUnicode_DecodeUTF8(
                    k.data(), static_cast<Py_ssize_t>(k.size()), "surrogatepass"))));
            }
        }
        return out;
    }

    std::size_t delete_matching(const std::string& pattern) {
        return store_->erase_if(now(), [&](std::string_view k) { return glob_match(pattern, k); });
    }

    void clear() { store_->clear(); }

    double now() const { return clock_ ? py::cast<double>(clock_()) : wall_clock(); }

private:
    struct NotInPlace {};

    static PyObject* check(PyObject* o) {
        if (!o) throw py::error_already_set();
        return o;
    }

    double expires_at(py::handle timeout, double t) const {
        std::optional<double> seconds;
        if (timeout.is(sentinel_)) {
            seconds = default_timeout_;
        } else if (!timeout.is_none()) {
            seconds = py::cast<double>(timeout);
            if (*seconds == 0) seconds = -1;  // Django: 0 means "expire now", not "never"
        }
        return seconds ? t + *seconds : kNever;
    }

    py::object incr_slow(const std::string& k, py::handle key, py::handle delta, double t) {
        Held held(store_->get(k, t));
        if (!held.value)
            throw py::value_error("Key '" + py::str(key).cast<std::string>() + "' not found");
        py::object old = materialize(static_cast<PyObject*>(held.value->handle), held.value->tag);
        py::object sum =
            py::reinterpret_steal<py::object>(check(PyNumber_Add(old.ptr(), delta.ptr())));
        Snapshot s = snapshot(sum, codec_);
        std::optional<double> e = store_->expiry(k, t);
        store_->set(k, Value{s.object.ptr(), s.tag, s.charge}, e ? *e : kNever, t);
        return sum;
    }

    static std::string utf8_of(py::handle key) {
        py::object s = py::reinterpret_borrow<py::object>(key);
        if (!PyUnicode_Check(key.ptr())) s = py::str(key);
        py::object b = py::reinterpret_steal<py::object>(
            check(PyUnicode_AsEncodedString(s.ptr(), "utf-8", "surrogatepass")));
        return std::string(PyBytes_AS_STRING(b.ptr()), PyBytes_GET_SIZE(b.ptr()));
    }

    // The final key in a per-thread buffer, validated (warning as Django does).
    const std::string& key_of(py::handle key, py::handle version, bool validate = true) {
        thread_local std::string buf;
        py::handle v = version.is_none() ? version_ : version;
        if (key_func_) {
            py::object made = key_func_(key, prefix_, v);
            buf = utf8_of(made);
            if (validate) warn(buf, keys::check(buf));
            return buf;
        }
        std::string_view text;
        py::object owner;
        Py_ssize_t n;
        const char* s =
            PyUnicode_CheckExact(key.ptr()) ? PyUnicode_AsUTF8AndSize(key.ptr(), &n) : nullptr;
        if (s) {
            text = std::string_view(s, n);
        } else {
            PyErr_Clear();
            owner = py::bytes(utf8_of(key));
            text = std::string_view(PyBytes_AS_STRING(owner.ptr()), PyBytes_GET_SIZE(owner.ptr()));
        }
        // Exactly int: a bool or an int subclass formats as its own str() under "%s".
        bool plain_int = PyLong_CheckExact(v.ptr());
        int overflow = 0;
        long long iv = plain_int ? PyLong_AsLongLongAndOverflow(v.ptr(), &overflow) : 0;
        unsigned problems;
        if (plain_int && !overflow && !PyErr_Occurred()) {
            problems = keys::make(prefix_, iv, text, buf);
        } else {  // a non-int version, as "%s" would format it
            PyErr_Clear();
            buf = prefix_ + ":" + utf8_of(v) + ":" + std::string(text);
            problems = keys::check(buf);
        }
        if (validate && problems) warn(buf, problems);
        return buf;
    }

    // Django's CacheKeyWarning texts (django.core.cache.backends.base.memcache_key_warnings).
    void warn(const std::string& key, unsigned problems) {
        if (!problems) return;
        py::object repr = py::repr(py::reinterpret_steal<py::object>(check(PyUnicode_DecodeUTF8(
            key.data(), static_cast<Py_ssize_t>(key.size()), "surrogatepass"))));
        std::string r = repr.cast<std::string>();
        if (problems & keys::kTooLong) {
            std::string msg = "Cache key will cause errors if used with memcached: " + r +
                              " (longer than " + std::to_string(keys::kMaxKeyChars) + ")";
            if (PyErr_WarnEx(key_warning_.ptr(), msg.c_str(), 1) < 0) throw py::error_already_set();
        }
        if (problems & keys::kBadChar) {
            std::string msg =
                "Cache key contains characters that will cause errors if used with memcached: " + r;
            if (PyErr_WarnEx(key_warning_.ptr(), msg.c_str(), 1) < 0) throw py::error_already_set();
        }
    }

    std::shared_ptr<Store> store_;
    std::shared_ptr<L1> l1_;
    std::size_t l1_max_item_ = static_cast<std::size_t>(-1);
    std::string prefix_;
    py::object version_;
    py::object key_func_;
    std::optional<double> default_timeout_;
    py::object sentinel_;
    py::object key_warning_;
    py::object clock_;
    CodecOptions codec_;
};

// The engine behind a bound get(); holds a reference to the engine's Python object.
struct FastGet {
    static constexpr const char* kCapsuleName = "fastcache.FastGet";
    Engine* engine = nullptr;
    PyObject* engine_ref = nullptr;
    ~FastGet() { Py_XDECREF(engine_ref); }
};

// The hottest call, get(key, default=None, version=None), as a plain METH_FASTCALL builtin
// bound to its engine: pybind11's general dispatcher costs about as much as the lookup.
const char* const kGetArgs[] = {"key", "default", "version"};

PyObject* fast_get(PyObject* capsule, PyObject* const* args, Py_ssize_t nargs, PyObject* kwnames) {
    PyObject* slots[3] = {nullptr, Py_None, Py_None};
    if (nargs > 3) {
        PyErr_Format(PyExc_TypeError, "get() takes at most 3 arguments (%zd given)", nargs);
        return nullptr;
    }
    for (Py_ssize_t i = 0; i < nargs; ++i) slots[i] = args[i];
    Py_ssize_t nkw = kwnames ? PyTuple_GET_SIZE(kwnames) : 0;
    for (Py_ssize_t i = 0; i < nkw; ++i) {
        PyObject* name = PyTuple_GET_ITEM(kwnames, i);
        int slot = -1;
        for (int j = 0; j < 3; ++j) {
            if (PyUnicode_CompareWithASCIIString(name, kGetArgs[j]) == 0) slot = j;
        }
        if (slot < 0 || slot < nargs) {
            PyErr_Format(PyExc_TypeError, "get() got an unexpected or repeated argument %R", name);
            return nullptr;
        }
        slots[slot] = args[nargs + i];
    }
    if (!slots[0]) {
        PyErr_SetString(PyExc_TypeError, "get() missing required argument 'key'");
        return nullptr;
    }
    auto* bound = bound_state<FastGet>(capsule);
    if (!bound) return nullptr;
    Engine* engine = bound->engine;
    try {
        return engine->get(slots[0], slots[1], slots[2]).release().ptr();
    } catch (py::error_already_set& e) {
        e.restore();
    } catch (...) {
        py::detail::translate_exception(std::current_exception());
    }
    return nullptr;
}

PyMethodDef fast_get_def = {
    "get", reinterpret_cast<PyCFunction>(reinterpret_cast<void (*)()>(&fast_get)),
    METH_FASTCALL | METH_KEYWORDS,
    "get(key, default=None, version=None): the value, or default on a miss"};

py::object bind_fast_get(py::object engine) {
    auto state = std::make_unique<FastGet>();
    state->engine = engine.cast<Engine*>();
    state->engine_ref = engine.inc_ref().ptr();
    return bind_builtins(std::move(state), {&fast_get_def})[0];
}

// get() for the coherent L1 in front of Redis: a hit is answered here; anything else
// (a miss, the L1 bypassed) is passed on, with the caller's arguments as given, to
// `fallback`, the Redis tier's get.
struct CoherentGet {
    static constexpr const char* kCapsuleName = "fastcache.CoherentGet";
    Engine* engine = nullptr;
    PyObject* engine_ref = nullptr;
    PyObject* fallback = nullptr;
    ~CoherentGet() {
        Py_XDECREF(engine_ref);
        Py_XDECREF(fallback);
    }
};

PyObject* coherent_get(PyObject* capsule, PyObject* const* args, Py_ssize_t nargs,
                       PyObject* kwnames) {
    auto* bound = bound_state<CoherentGet>(capsule);
    if (!bound) return nullptr;
    PyObject* key = nargs >= 1 ? args[0] : nullptr;
    PyObject* version = nargs >= 3 ? args[2] : Py_None;
    Py_ssize_t nkw = kwnames ? PyTuple_GET_SIZE(kwnames) : 0;
    for (Py_ssize_t i = 0; i < nkw; ++i) {
        PyObject* name = PyTuple_GET_ITEM(kwnames, i);
        if (PyUnicode_CompareWithASCIIString(name, "key") == 0)
            key = args[nargs + i];
        else if (PyUnicode_CompareWithASCIIString(name, "version") == 0)
            version = args[nargs + i];
    }
    if (key && nargs <= 3) {  // anything odd is left to the fallback to report
        try {
            PyObject* hit = bound->engine->l1_hit(key, version);
            if (hit) return hit;
        } catch (py::error_already_set& e) {
            e.restore();
            return nullptr;
        } catch (...) {
            py::detail::translate_exception(std::current_exception());
            return nullptr;
        }
    }
    return PyObject_Vectorcall(bound->fallback, args, static_cast<size_t>(nargs), kwnames);
}

PyMethodDef coherent_get_def = {
    "get", reinterpret_cast<PyCFunction>(reinterpret_cast<void (*)()>(&coherent_get)),
    METH_FASTCALL | METH_KEYWORDS,
    "get(key, default=None, version=None): from the coherent L1, else from Redis"};

py::object bind_coherent_get(py::object engine, py::object fallback) {
    auto state = std::make_unique<CoherentGet>();
    state->engine = engine.cast<Engine*>();
    state->engine_ref = engine.inc_ref().ptr();
    state->fallback = fallback.inc_ref().ptr();
    return bind_builtins(std::move(state), {&coherent_get_def})[0];
}

void listener_configure(PyStore& s,
                        const std::vector<std::tuple<std::string, int, std::string>>& endpoints,
                        std::string username, std::string password,
                        const std::vector<std::string>& prefixes, double connect_timeout,
                        double ping_interval, double pong_deadline) {
    ListenerConfig c;
    for (const auto& [host, port, path] : endpoints) c.endpoints.push_back({host, port, path});
    c.username = std::move(username);
    c.password = std::move(password);
    c.prefixes = prefixes;
    c.connect_timeout = connect_timeout;
    c.ping_interval = ping_interval;
    c.pong_deadline = pong_deadline;
    c.clock = &wall_clock;
    Released released;
    s.l1->listener.configure(std::move(c), released);
    release_all(released);
}

py::dict listener_stats(const PyStore& s) {
    ListenerStats st = s.l1->listener.stats();
    static const char* const kStates[] = {"down", "resetting", "up"};
    py::dict d;
    d["state"] = kStates[static_cast<int>(st.state)];
    d["connections"] = st.connections;
    d["messages"] = st.messages;
    d["keys"] = st.keys;
    d["flushes"] = st.flushes;
    d["downs"] = st.downs;
    d["ups"] = st.ups;
    d["starts"] = st.starts;
    d["pings"] = st.pings;
    d["last_error"] = st.last_error;
    return d;
}

py::dict stats_of(const PyStore& s) {
    s.l1->bury_check();
    StoreStats st = s.store->stats();
    const StoreConfig& c = s.store->config();
    py::dict d;
    d["hits"] = st.hits;
    d["misses"] = st.misses;
    d["sets"] = st.sets;
    d["deletes"] = st.deletes;
    d["evictions"] = st.evictions;
    d["expirations"] = st.expirations;
    d["entries"] = st.entries;
    d["bytes"] = st.bytes;
    d["max_bytes"] = c.max_bytes;
    d["max_entries"] = c.max_entries;
    d["cull_frequency"] = c.cull_frequency;
    d["shards"] = c.shards;
    return d;
}

}  // namespace

void register_cache(py::module_& m) {
    py::class_<PyStore>(m, "Store")
        .def(py::init<std::size_t, std::size_t, unsigned, unsigned>(), py::kw_only(),
             py::arg("max_bytes"), py::arg("max_entries"), py::arg("cull_frequency"),
             py::arg("shards") = 16)
        .def("stats", &stats_of)
        .def("clear", [](PyStore& s) { s.store->clear(); })
        // The coherent L1 in front of Redis (core/coherence.hpp, core/listener.hpp).
        .def(
            "invalidate",
            [](PyStore& s, py::iterable keys) {
                s.l1->bury_check();
                std::size_t n = 0;
                Released released;
                for (py::handle key : keys) {
                    py::object owner;
                    std::string k(bytes_or_str(key, owner));
                    s.l1->coherence.invalidate(k, wall_clock(), released);
                    ++n;
                }
                release_all(released);
                return n;
            },
            py::arg("final_keys"), "bump and drop each key (str or UTF-8 bytes)")
        .def(
            "reset",
            [](PyStore& s, bool usable) {
                s.l1->bury_check();
                Released released;
                s.l1->listener.reset_coherence(usable, released);
                release_all(released);
            },
            py::arg("usable"),
            "bump every bucket, clear, and set whether the L1 may be used (while the native "
            "listener runs, usable only if it is up)")
        .def_property_readonly("usable", [](const PyStore& s) { return s.l1->coherence.usable(); })
        .def("coherence_stats",
             [](const PyStore& s) {
                 s.l1->bury_check();
                 CoherenceStats c = s.l1->coherence.stats();
                 py::dict d;
                 d["invalidated"] = c.invalidated;
                 d["resets"] = c.resets;
                 d["fills"] = c.fills;
                 d["fills_refused"] = c.refused;
                 return d;
             })
        .def("listener_configure", &listener_configure, py::kw_only(), py::arg("endpoints"),
             py::arg("username"), py::arg("password"), py::arg("prefixes"),
             py::arg("connect_timeout"), py::arg("ping_interval"), py::arg("pong_deadline"),
             "(re)configure the native listener; a running one resets the L1 and reconnects")
        .def(
            "listener_start", [](PyStore& s) { return s.l1->listener.start(); },
            "start the native listener thread unless it runs; whether it started one")
        .def("listener_stop",
             [](PyStore& s) {
                 Released released;
                 s.l1->listener.stop(released);
                 release_all(released);
                 s.l1->bury_check();
             })
        .def(
            "listener_restart",
            [](PyStore& s) {
                Released released;
                s.l1->listener.restart(released);
                release_all(released);
            },
            "reset the L1 to bypassed now and make the listener reconnect")
        .def("listener_stats", &listener_stats)
        .def(
            "listener_pending", [](const PyStore& s) { return s.l1->listener.pending(); },
            "whether an invalidation may be unread or unapplied in this process (one poll)")
        // For tests: "" or the first broken internal invariant (exact only when idle).
        .def("_check_invariants", [](const PyStore& s) { return s.store->check_invariants(); });

    py::object none = py::none();
    py::class_<Engine>(m, "Engine")
        .def(py::init([](const PyStore& store, std::string key_prefix, py::object version,
                         py::object key_func, py::object default_timeout,
                         py::object default_sentinel, py::object key_warning,
                         const CodecOptions& codec) {
                 return std::make_unique<Engine>(store, std::move(key_prefix), version, key_func,
                                                 default_timeout, default_sentinel, key_warning,
                                                 codec);
             }),
             py::keep_alive<1, 2>(), py::kw_only(), py::arg("store"), py::arg("key_prefix"),
             py::arg("version"), py::arg("key_func"), py::arg("default_timeout"),
             py::arg("default_sentinel"), py::arg("key_warning"), py::arg("codec"))
        .def("set_prefix", &Engine::set_prefix)
        .def("set_version", &Engine::set_version)
        .def("set_key_func", &Engine::set_key_func)
        .def("set_default_timeout", &Engine::set_default_timeout)
        .def("set_clock", &Engine::set_clock)
        .def(
            "fast_get", [](py::object self) { return bind_fast_get(std::move(self)); },
            "get() as a builtin bound to this engine (no general dispatch)")
        .def("now", &Engine::now)
        .def("make_key", &Engine::make_key, py::arg("key"), py::arg("version") = none)
        .def("validate_key", &Engine::validate_key, py::arg("key"))
        .def("key", &Engine::key, py::arg("key"), py::arg("version") = none)
        .def("keys_of", &Engine::keys_of, py::arg("keys"), py::arg("version") = none)
        .def("dumps", &Engine::dumps, py::arg("value"))
        .def("loads", &Engine::loads, py::arg("data"))
        .def("timeout_seconds", &Engine::timeout_seconds, py::arg("timeout"))
        .def("l1_get", &Engine::l1_get, py::arg("final_key"), py::arg("default") = none)
        .def("l1_set", &Engine::l1_set, py::arg("final_key"), py::arg("value"), py::arg("seconds"))
        .def("l1_token", &Engine::l1_token, py::arg("final_key"))
        .def("l1_fill", &Engine::l1_fill, py::arg("final_key"), py::arg("value"),
             py::arg("seconds"), py::arg("token"))
        .def("l1_write", &Engine::l1_write, py::arg("final_key"), py::arg("value"),
             py::arg("seconds"), py::arg("token"))
        .def("l1_invalidate", &Engine::l1_invalidate, py::arg("final_key"))
        .def("set_l1_max_item_bytes", &Engine::set_l1_max_item_bytes, py::arg("max_bytes"))
        .def(
            "coherent_get",
            [](py::object self, py::object fallback) {
                return bind_coherent_get(std::move(self), std::move(fallback));
            },
            py::arg("fallback"), "get() answering L1 hits here and passing the rest to fallback")
        .def("get", &Engine::get, py::arg("key"), py::arg("default") = none,
             py::arg("version") = none)
        .def("set", &Engine::set, py::arg("key"), py::arg("value"), py::arg("timeout"),
             py::arg("version") = none)
        .def("add", &Engine::add, py::arg("key"), py::arg("value"), py::arg("timeout"),
             py::arg("version") = none)
        .def("touch", &Engine::touch, py::arg("key"), py::arg("timeout"), py::arg("version") = none)
        .def("delete", &Engine::remove, py::arg("key"), py::arg("version") = none)
        .def("has_key", &Engine::has_key, py::arg("key"), py::arg("version") = none)
        .def("get_many", &Engine::get_many, py::arg("keys"), py::arg("version") = none)
        .def("set_many", &Engine::set_many, py::arg("data"), py::arg("timeout"),
             py::arg("version") = none)
        .def("delete_many", &Engine::delete_many, py::arg("keys"), py::arg("version") = none)
        .def("incr", &Engine::incr, py::arg("key"), py::arg("delta"), py::arg("version") = none)
        .def("pttl", &Engine::pttl, py::arg("key"), py::arg("version") = none)
        .def("expire_at", &Engine::expire_at, py::arg("key"), py::arg("when"),
             py::arg("version") = none)
        .def("keys", &Engine::keys, py::arg("pattern"))
        .def("delete_matching", &Engine::delete_matching, py::arg("pattern"))
        .def("clear", &Engine::clear);
}

}  // namespace fastcache::bindings
