// Bindings for the JSON log formatter: walks Python values (exact type dispatch) into the
// core's json::Writer, applies redaction, and implements python-json-logger's
// record-to-fields step (add_fields) so a plain record never runs Python bytecode.
#include <Python.h>
#include <datetime.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <cmath>
#include <cstring>
#include <ctime>
#include <memory>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "bindings/registry.hpp"
#include "core/json_writer.hpp"
#include "core/redact.hpp"

namespace py = pybind11;

namespace fastcache::bindings {

namespace {

using json::Span;
using json::Writer;
using json::WriterOptions;

// Ways to turn a non-JSON value into JSON without calling the Python default function,
// for exact types the Python layer registered (only with the built-in default table).
enum FastKind : int { kIsoformat = 1, kStr = 2, kUuid = 3, kBase64 = 4 };

// Calls a unicode-kind-specific functor on the code units of a str.
template <class F>
decltype(auto) with_units(PyObject* s, F&& f) {
    const Py_ssize_t n = PyUnicode_GET_LENGTH(s);
    const void* data = PyUnicode_DATA(s);
    switch (PyUnicode_KIND(s)) {
        case PyUnicode_1BYTE_KIND:
            return f(static_cast<const std::uint8_t*>(data), static_cast<std::size_t>(n));
        case PyUnicode_2BYTE_KIND:
            return f(static_cast<const std::uint16_t*>(data), static_cast<std::size_t>(n));
        default:
            return f(static_cast<const std::uint32_t*>(data), static_cast<std::size_t>(n));
    }
}

// Interned names live for the whole process (never released: no decref at shutdown).
py::handle intern(const char* s) {
    PyObject* o = PyUnicode_InternFromString(s);
    if (!o) throw py::error_already_set();
    return o;
}

// The mutable state of one serialization; one per concurrent call (see Encoder).
struct State {
    explicit State(const WriterOptions& o) : writer(o) {}
    Writer writer;
    std::vector<PyObject*> path;  // containers (and defaulted objects) being written
    std::vector<Span> spans;
    std::string scratch;
};

// Serializes log data to JSON text. Thread safety: safe under the GIL from any number of
// threads, including re-entrant calls from a default function or a getMessage() that
// logs: each call takes its own State. Complexity: O(size of the value); cycle checks
// are O(depth) per container. Exceptions: a failing default function or str() never
// escapes (the value is written as a fallback string); only BaseExceptions that are not
// Exceptions (KeyboardInterrupt, SystemExit) propagate.
class Encoder {
public:
    Encoder(bool ensure_ascii, std::optional<std::string> indent, py::object default_fn,
            py::dict fast_types, const std::vector<std::string>& redact_keys,
            unsigned redact_values, std::string redacted, std::string circular,
            std::string too_deep, int max_depth, const std::vector<std::string>& redact_words)
        : default_fn_(std::move(default_fn)),
          fast_types_(std::move(fast_types)),
          keys_(redact_keys, redact_words),
          value_patterns_(redact_values),
          redacted_(std::move(redacted)),
          circular_(std::move(circular)),
          too_deep_(std::move(too_deep)),
          max_depth_(static_cast<std::size_t>(max_depth)) {
        options_.ensure_ascii = ensure_ascii;
        options_.has_indent = indent.has_value();
        if (indent) options_.indent = *indent;
        for (unsigned char c : redacted_) {
            if (c >= 0x80) throw std::invalid_argument("the redaction placeholder must be ASCII");
        }
    }

    // python-json-logger's record-to-fields settings, computed once by the Python layer.
    void configure_record(py::dict templ, py::list required, py::dict rename, py::object skip,
                          py::object context_var, py::object timestamp_key, py::list keep_missing,
                          std::string prefix, bool needs_asctime, py::object noscan,
                          py::object request_key, py::object context_resolver) {
        template_ = std::move(templ);
        required_ = std::move(required);
        rename_ = std::move(rename);
        skip_ = std::move(skip);
        context_var_ = std::move(context_var);
        timestamp_key_ = std::move(timestamp_key);
        keep_missing_ = std::move(keep_missing);
        prefix_ = std::move(prefix);
        needs_asctime_ = needs_asctime;
        noscan_ = std::move(noscan);
        request_key_ = std::move(request_key);
        context_resolver_ = std::move(context_resolver);
        build_skip_table();
        configured_ = true;
    }

    py::object dumps(py::handle obj, py::handle noscan) {
        return with_state([&](State& st) {
            write_top(st, obj.ptr(), noscan.ptr());
            return finish(st);
        });
    }

    // `text` with what the value patterns find replaced (the query pattern with
    // `bare_query` treats the text as a query string: "a=1&token=x").
    py::str redact_string(py::str text, bool bare_query) {
        std::vector<Span> spans;
        with_units(text.ptr(), [&](auto* s, std::size_t n) {
            redact::find_value_spans(s, n, value_patterns_, spans, &keys_, bare_query);
        });
        if (spans.empty()) return text;
        py::list parts;
        std::size_t pos = 0;
        for (const Span& sp : spans) {
            parts.append(text[py::slice(static_cast<Py_ssize_t>(pos),
                                        static_cast<Py_ssize_t>(sp.begin), 1)]);
            parts.append(py::str(redacted_));
            pos = sp.end;
        }
        parts.append(
            text[py::slice(static_cast<Py_ssize_t>(pos), PyUnicode_GET_LENGTH(text.ptr()), 1)]);
        return py::str("").attr("join")(parts);
    }

    // python-json-logger's add_fields: fills `log_data` from the record.
    void add_fields(py::handle formatter, py::handle log_data, py::handle record,
                    py::handle message_dict) {
        require_configured();
        py::object rd = record_dict(record.ptr());
        fill(formatter.ptr(), log_data.ptr(), record.ptr(), rd.ptr(), message_dict.ptr());
    }

    // The whole of format() for formatters that override none of its hooks.
    py::object format(py::handle formatter, py::handle record) {
        require_configured();
        PyObject* rec = record.ptr();
        py::object rd_held = record_dict(rec);
        PyObject* rd = rd_held.ptr();
        py::object message_dict = py::dict();
        PyObject* msg = PyDict_GetItemWithError(rd, s_msg.ptr());
        if (!msg && PyErr_Occurred()) throw py::error_already_set();
        if (msg && PyDict_Check(msg)) {
            message_dict = py::reinterpret_steal<py::object>(PyDict_Copy(msg));
            if (!message_dict) throw py::error_already_set();
            set_record_attr(rec, rd, s_message.ptr(), s_empty.ptr());
        } else {
            py::object message;
            PyObject* args = PyDict_GetItemWithError(rd, s_args.ptr());
            if (!args && PyErr_Occurred()) throw py::error_already_set();
            int has_args = args ? PyObject_IsTrue(args) : 0;
            if (has_args < 0) throw py::error_already_set();
            if (msg && PyUnicode_CheckExact(msg) && plain_record(rec)) {
                // LogRecord.getMessage() is str(msg) % args when args; for an exact str
                // that is PyUnicode_Format, without the Python frame.
                message = has_args ? py::reinterpret_steal<py::object>(PyUnicode_Format(msg, args))
                                   : py::reinterpret_borrow<py::object>(msg);
            } else {
                message = py::reinterpret_steal<py::object>(
                    PyObject_CallMethodNoArgs(rec, s_getMessage.ptr()));
            }
            if (!message) {
                // A message whose arguments do not fit it ("%s %s" with one argument) is
                // written anyway: the raw message, and the error beside it.
                if (!PyErr_ExceptionMatches(PyExc_Exception)) throw py::error_already_set();
                py::error_already_set err;
                py::tuple pair = py::reinterpret_borrow<py::object>(formatter).attr(
                    s_message_failure)(record, err.value());
                message = pair[0];
                message_dict.attr("__setitem__")(pair[1], pair[2]);
            }
            set_record_attr(rec, rd, s_message.ptr(), message.ptr());
        }
        if (needs_asctime_) {
            py::object asctime = format_time(formatter.ptr(), rd);
            if (!asctime) {
                py::object fmt = py::reinterpret_borrow<py::object>(formatter);
                asctime = fmt.attr(s_formatTime)(record, fmt.attr(s_datefmt));
            }
            set_record_attr(rec, rd, s_asctime.ptr(), asctime.ptr());
        }
        if (truthy(rd, s_exc_info) || truthy(rd, s_exc_text) || truthy(rd, s_stack_info)) {
            message_dict = py::reinterpret_borrow<py::object>(formatter).attr(s_exception_fields)(
                record, message_dict);
        }
        py::dict log_data;
        fill(formatter.ptr(), log_data.ptr(), rec, rd, message_dict.ptr());
        return with_state([&](State& st) {
            st.writer.raw(prefix_);
            write_top(st, log_data.ptr(), noscan_.ptr());
            return finish(st);
        });
    }

private:
    static inline py::handle s_msg, s_message, s_args, s_empty, s_getMessage, s_formatTime,
        s_datefmt, s_asctime, s_exc_info, s_exc_text, s_stack_info, s_exception_fields,
        s_request_summary, s_timestamp_value, s_isoformat, s_int, s_message_failure, s_converter,
        s_default_time_format, s_default_msec_format, s_created, s_msecs, s_pending_key;
    static inline PyObject* s_logrecord_type = nullptr;
    static inline PyObject* s_base_formatTime = nullptr;
    static inline PyObject* s_localtime = nullptr;
    static inline PyObject* s_gmtime = nullptr;

public:
    static void init_statics() {
        s_msg = intern("msg");
        s_message = intern("message");
        s_args = intern("args");
        s_empty = intern("");
        s_getMessage = intern("getMessage");
        s_formatTime = intern("formatTime");
        s_datefmt = intern("datefmt");
        s_asctime = intern("asctime");
        s_exc_info = intern("exc_info");
        s_exc_text = intern("exc_text");
        s_stack_info = intern("stack_info");
        s_exception_fields = intern("_exception_fields");
        s_request_summary = intern("_request_summary");
        s_timestamp_value = intern("_timestamp_value");
        s_isoformat = intern("isoformat");
        s_int = intern("int");
        s_message_failure = intern("_message_failure");
        s_converter = intern("converter");
        s_default_time_format = intern("default_time_format");
        s_default_msec_format = intern("default_msec_format");
        s_created = intern("created");
        s_msecs = intern("msecs");
        s_pending_key = intern("_pending");
        py::object time_mod = py::module_::import("time");
        s_localtime = py::object(time_mod.attr("localtime")).release().ptr();
        s_gmtime = py::object(time_mod.attr("gmtime")).release().ptr();
        s_base_formatTime =
            py::object(py::module_::import("logging").attr("Formatter").attr("formatTime"))
                .release()
                .ptr();
        PyDateTime_IMPORT;
        if (!PyDateTimeAPI) throw py::error_already_set();
        py::object logrecord = py::module_::import("logging").attr("LogRecord");
        s_logrecord_type = logrecord.release().ptr();
    }

private:
    // logging.Formatter.formatTime in C++, for formatters that do not override it and
    // whose converter is time.localtime or time.gmtime: the same libc calls Python's time
    // module makes (localtime_r / gmtime_r, then strftime in the current locale, decoded
    // as time.strftime decodes), so the text is identical. The strftime text is cached
    // for the last second seen; a change of converter or format starts the cache again.
    // Returns a null object when the Python method must run instead.
    py::object format_time(PyObject* formatter, PyObject* rd) {
        py::object method =
            py::reinterpret_steal<py::object>(PyObject_GetAttr(formatter, s_formatTime.ptr()));
        if (!method) throw py::error_already_set();
        if (!PyMethod_Check(method.ptr()) ||
            PyMethod_GET_FUNCTION(method.ptr()) != s_base_formatTime) {
            return {};
        }
        py::object conv = getattr_or_throw(formatter, s_converter);
        int kind = conv.ptr() == s_localtime ? 1 : conv.ptr() == s_gmtime ? 2 : 0;
        if (!kind) return {};
        PyObject* created = PyDict_GetItemWithError(rd, s_created.ptr());
        if (!created) {
            if (PyErr_Occurred()) throw py::error_already_set();
            return {};
        }
        if (!PyFloat_CheckExact(created) && !PyLong_CheckExact(created)) return {};
        double t = PyFloat_AsDouble(created);
        if (t == -1.0 && PyErr_Occurred()) {
            PyErr_Clear();
            return {};
        }
        // time.localtime(float) floors, and refuses what does not fit a time_t.
        if (!std::isfinite(t) || t < -9.2e18 || t > 9.2e18) return {};
        const auto sec = static_cast<std::time_t>(std::floor(t));

        py::object datefmt = getattr_or_throw(formatter, s_datefmt);
        int has_datefmt = PyObject_IsTrue(datefmt.ptr());
        if (has_datefmt < 0) throw py::error_already_set();
        py::object fmt = has_datefmt ? datefmt : getattr_or_throw(formatter, s_default_time_format);
        py::object msec_fmt;
        if (!has_datefmt) {
            msec_fmt = getattr_or_throw(formatter, s_default_msec_format);
            int truthy_msec = PyObject_IsTrue(msec_fmt.ptr());
            if (truthy_msec < 0) throw py::error_already_set();
            if (!truthy_msec) msec_fmt = py::object();
        }
        py::object text = strftime_cached(sec, kind, fmt);
        if (!text) return {};
        if (!msec_fmt) return text;
        PyObject* msecs = PyDict_GetItemWithError(rd, s_msecs.ptr());
        if (!msecs) {
            if (PyErr_Occurred()) throw py::error_already_set();
            return {};
        }
        if (PyUnicode_CheckExact(msec_fmt.ptr()) && PyFloat_CheckExact(msecs) &&
            PyUnicode_IS_ASCII(text.ptr()) &&
            PyUnicode_CompareWithASCIIString(msec_fmt.ptr(), "%s,%03d") == 0) {
            double ms = PyFloat_AS_DOUBLE(msecs);
            if (ms >= 0.0 && ms < 1000.0) {
                // "%03d" % msecs: int() of the float, zero-padded to three digits.
                int v = static_cast<int>(ms);
                Py_ssize_t n = PyUnicode_GET_LENGTH(text.ptr());
                PyObject* out = PyUnicode_New(n + 4, 127);
                if (!out) throw py::error_already_set();
                char* p = static_cast<char*>(PyUnicode_DATA(out));
                std::memcpy(p, PyUnicode_DATA(text.ptr()), static_cast<std::size_t>(n));
                p[n] = ',';
                p[n + 1] = static_cast<char>('0' + v / 100);
                p[n + 2] = static_cast<char>('0' + v / 10 % 10);
                p[n + 3] = static_cast<char>('0' + v % 10);
                return py::reinterpret_steal<py::object>(out);
            }
        }
        py::tuple args = py::make_tuple(text, py::reinterpret_borrow<py::object>(msecs));
        PyObject* out = PyNumber_Remainder(msec_fmt.ptr(), args.ptr());
        if (!out) throw py::error_already_set();
        return py::reinterpret_steal<py::object>(out);
    }

    static py::object getattr_or_throw(PyObject* o, py::handle name) {
        PyObject* v = PyObject_GetAttr(o, name.ptr());
        if (!v) throw py::error_already_set();
        return py::reinterpret_steal<py::object>(v);
    }

    py::object strftime_cached(std::time_t sec, int kind, const py::object& fmt) {
        if (time_cache_.text && time_cache_.sec == sec && time_cache_.kind == kind &&
            (time_cache_.fmt.ptr() == fmt.ptr() ||
             (PyUnicode_CheckExact(fmt.ptr()) && PyUnicode_CheckExact(time_cache_.fmt.ptr()) &&
              PyUnicode_Compare(fmt.ptr(), time_cache_.fmt.ptr()) == 0))) {
            return time_cache_.text;
        }
        // Only formats that time.strftime passes to libc unchanged: exact str, ASCII (so
        // the locale encoding is the identity), no NUL (which Python rejects).
        if (!PyUnicode_CheckExact(fmt.ptr()) || !PyUnicode_IS_ASCII(fmt.ptr())) return {};
        Py_ssize_t flen = PyUnicode_GET_LENGTH(fmt.ptr());
        const char* f = static_cast<const char*>(PyUnicode_DATA(fmt.ptr()));
        if (std::memchr(f, '\0', static_cast<std::size_t>(flen))) return {};
        struct tm tm{};
        if (kind == 1) {
            if (!localtime_r(&sec, &tm)) return {};
        } else {
            if (!gmtime_r(&sec, &tm)) return {};  // tm_zone as libc names it, as time.gmtime
        }
        // time.strftime grows its buffer until the text fits or it reaches 256 times the
        // format's length, and takes an empty result then as the answer.
        std::string buf;
        std::size_t len = 0;
        for (std::size_t size = 1024;; size += size) {
            buf.resize(size);
            len = std::strftime(buf.data(), size, f, &tm);
            if (len > 0 || size >= 256 * static_cast<std::size_t>(flen)) break;
        }
        PyObject* text = PyUnicode_DecodeLocaleAndSize(buf.data(), static_cast<Py_ssize_t>(len),
                                                       "surrogateescape");
        if (!text) throw py::error_already_set();
        time_cache_.sec = sec;
        time_cache_.kind = kind;
        time_cache_.fmt = fmt;
        time_cache_.text = py::reinterpret_steal<py::object>(text);
        return time_cache_.text;
    }

    void require_configured() const {
        if (!configured_) throw std::logic_error("Encoder.configure_record() was not called");
    }

    static bool plain_record(PyObject* rec) {
        return reinterpret_cast<PyObject*>(Py_TYPE(rec)) == s_logrecord_type;
    }

    // The record's __dict__ (a new reference), where logging keeps every attribute.
    static py::object record_dict(PyObject* rec) {
        PyObject* d = PyObject_GenericGetDict(rec, nullptr);
        if (!d) throw py::error_already_set();
        py::object held = py::reinterpret_steal<py::object>(d);
        if (!PyDict_Check(d)) throw py::type_error("a logging.LogRecord was expected");
        return held;
    }

    // Plain LogRecords take the attribute straight into their __dict__, as setattr would;
    // subclasses go through setattr in case they define properties.
    static void set_record_attr(PyObject* rec, PyObject* rd, PyObject* name, PyObject* value) {
        int rc = plain_record(rec) ? PyDict_SetItem(rd, name, value)
                                   : PyObject_SetAttr(rec, name, value);
        if (rc < 0) throw py::error_already_set();
    }

    static bool truthy(PyObject* rd, py::handle key) {
        PyObject* v = PyDict_GetItemWithError(rd, key.ptr());
        if (!v) {
            if (PyErr_Occurred()) throw py::error_already_set();
            return false;
        }
        int t = PyObject_IsTrue(v);
        if (t < 0) throw py::error_already_set();
        return t == 1;
    }

    PyObject* renamed(PyObject* key) const {
        if (PyDict_GET_SIZE(rename_.ptr()) == 0) return key;
        PyObject* r = PyDict_GetItemWithError(rename_.ptr(), key);
        if (!r) {
            if (PyErr_Occurred()) throw py::error_already_set();
            return key;
        }
        return r;
    }

    static void set(PyObject* d, PyObject* k, PyObject* v) {
        if (PyDict_SetItem(d, k, v) < 0) throw py::error_already_set();
    }

    void merge_renamed(PyObject* log_data, PyObject* src) {
        PyObject *k, *v;
        Py_ssize_t pos = 0;
        while (PyDict_Next(src, &pos, &k, &v)) set(log_data, renamed(k), v);
    }

    // Like merge_renamed, leaving out private (str keys starting with "_") entries.
    void merge_public(PyObject* log_data, PyObject* src) {
        PyObject *k, *v;
        Py_ssize_t pos = 0;
        while (PyDict_Next(src, &pos, &k, &v)) {
            if (PyUnicode_Check(k) && PyUnicode_GET_LENGTH(k) > 0 &&
                PyUnicode_READ_CHAR(k, 0) == '_') {
                continue;
            }
            set(log_data, renamed(k), v);
        }
    }

    void fill(PyObject* formatter, PyObject* log_data, PyObject* rec, PyObject* rd,
              PyObject* message_dict) {
        if (!PyDict_Check(log_data)) throw py::type_error("log_data must be a dict");
        if (PyDict_Update(log_data, template_.ptr()) < 0) throw py::error_already_set();
        // Required (fmt) fields whose renamed key static_fields does not overwrite.
        for (py::handle item : required_) {
            PyObject* out_key = PyTuple_GET_ITEM(item.ptr(), 0);
            PyObject* field = PyTuple_GET_ITEM(item.ptr(), 1);
            PyObject* v = PyDict_GetItemWithError(rd, field);
            if (!v) {
                if (PyErr_Occurred()) throw py::error_already_set();
                v = Py_None;
            }
            set(log_data, out_key, v);
        }
        if (!context_var_.is_none()) {
            PyObject* ctx = nullptr;
            if (PyContextVar_Get(context_var_.ptr(), nullptr, &ctx) < 0) {
                throw py::error_already_set();
            }
            py::object holder = py::reinterpret_steal<py::object>(ctx);
            if (ctx && PyDict_Check(ctx)) {
                // Fields the context cannot know when it is made (the user a DRF view
                // authenticates) are resolved when a line is written.
                if (!context_resolver_.is_none()) {
                    int pending = PyDict_Contains(ctx, s_pending_key.ptr());
                    if (pending < 0) throw py::error_already_set();
                    if (pending) context_resolver_(holder);
                }
                merge_public(log_data, ctx);
            }
        }
        if (message_dict && message_dict != Py_None) {
            if (!PyDict_Check(message_dict)) throw py::type_error("message_dict must be a dict");
            merge_renamed(log_data, message_dict);
        }
        // Extras: every attribute of the record that is neither reserved, a fmt field,
        // nor private (a str key starting with "_").
        PyObject *k, *v;
        Py_ssize_t pos = 0;
        const bool has_rename = PyDict_GET_SIZE(rename_.ptr()) != 0;
        while (PyDict_Next(rd, &pos, &k, &v)) {
            if (PyUnicode_Check(k) && PyUnicode_GET_LENGTH(k) > 0 &&
                PyUnicode_READ_CHAR(k, 0) == '_') {
                continue;
            }
            if (skip_table_hit(k)) continue;
            int skip = PySet_Contains(skip_.ptr(), k);
            if (skip < 0) throw py::error_already_set();
            if (skip) continue;
            py::object hold_value = py::reinterpret_borrow<py::object>(v), replaced;
            if (!request_key_.is_none() && !is_json_native(v)) {
                int eq = PyObject_RichCompareBool(k, request_key_.ptr(), Py_EQ);
                if (eq < 0) throw py::error_already_set();
                if (eq) {
                    replaced = py::reinterpret_borrow<py::object>(formatter).attr(
                        s_request_summary)(py::handle(rec), py::handle(v));
                    v = replaced.ptr();
                }
            }
            set(log_data, has_rename ? renamed(k) : k, v);
        }
        if (!timestamp_key_.is_none()) {
            py::object ts = py::reinterpret_borrow<py::object>(formatter).attr(s_timestamp_value)(
                py::handle(rec));
            set(log_data, renamed(timestamp_key_.ptr()), ts.ptr());
        }
        for (py::handle field : keep_missing_) {
            int has = PyDict_Contains(log_data, field.ptr());
            if (has < 0) throw py::error_already_set();
            if (!has) set(log_data, field.ptr(), Py_None);
        }
    }

    // Record attribute names are interned strings, and so are the reserved names the
    // Python layer passes in, so most skip checks are a pointer match in this table (the
    // frozenset keeps the objects alive, which makes pointer identity sound). A miss
    // falls back to the set lookup, so equal but distinct strings are still skipped.
    void build_skip_table() {
        std::size_t n = static_cast<std::size_t>(PySet_GET_SIZE(skip_.ptr()));
        std::size_t cap = 16;
        while (cap < 4 * n) cap <<= 1;
        skip_table_.assign(cap, nullptr);
        for (py::handle k : skip_) {
            std::size_t i = slot(k.ptr(), cap - 1);
            while (skip_table_[i]) i = (i + 1) & (cap - 1);
            skip_table_[i] = k.ptr();
        }
    }

    static std::size_t slot(PyObject* p, std::size_t mask) {
        auto v = reinterpret_cast<std::uintptr_t>(p);
        return static_cast<std::size_t>((v >> 4) ^ (v >> 12)) & mask;
    }

    bool skip_table_hit(PyObject* k) const {
        const std::size_t mask = skip_table_.size() - 1;
        for (std::size_t i = slot(k, mask);; i = (i + 1) & mask) {
            PyObject* e = skip_table_[i];
            if (!e) return false;
            if (e == k) return true;
        }
    }

    static bool is_json_native(PyObject* v) {
        return v == Py_None || PyUnicode_Check(v) || PyLong_Check(v) || PyFloat_Check(v) ||
               PyList_Check(v) || PyTuple_Check(v) || PyDict_Check(v);
    }

    template <class F>
    py::object with_state(F&& f) {
        std::unique_ptr<State> st = std::move(spare_);
        if (!st) st = std::make_unique<State>(options_);
        st->writer.clear();
        st->path.clear();
        py::object result = f(*st);
        // Keep one state for the next call unless a re-entrant call already did.
        if (!spare_ && st->writer.str().capacity() <= (1u << 20)) spare_ = std::move(st);
        return result;
    }

    static py::object finish(State& st) {
        const std::string& s = st.writer.str();
        PyObject* out;
        if (st.writer.ascii_only()) {
            out = PyUnicode_New(static_cast<Py_ssize_t>(s.size()), 127);
            if (out) std::memcpy(PyUnicode_DATA(out), s.data(), s.size());
        } else {
            out = PyUnicode_DecodeUTF8(s.data(), static_cast<Py_ssize_t>(s.size()), "strict");
        }
        if (!out) throw py::error_already_set();
        return py::reinterpret_steal<py::object>(out);
    }

    // The top level: like value(), but values of keys in `noscan` (exception and stack
    // text) are not searched for value patterns.
    void write_top(State& st, PyObject* obj, PyObject* noscan) {
        if (!PyDict_Check(obj) || !value_patterns_ || !PyAnySet_Check(noscan) ||
            PySet_GET_SIZE(noscan) == 0) {
            value(st, obj, true);
            return;
        }
        object(st, obj, noscan);
    }

    void value(State& st, PyObject* o, bool scan) {
        if (o == Py_None) {
            st.writer.null();
        } else if (o == Py_True) {
            st.writer.boolean(true);
        } else if (o == Py_False) {
            st.writer.boolean(false);
        } else if (PyUnicode_Check(o)) {
            string(st, o, scan);
        } else if (PyLong_Check(o)) {
            integer(st, o);
        } else if (PyFloat_Check(o)) {
            st.writer.floating(PyFloat_AS_DOUBLE(o));
        } else if (PyList_Check(o) || PyTuple_Check(o)) {
            array(st, o);
        } else if (PyDict_Check(o)) {
            object(st, o, nullptr);
        } else {
            other(st, o);
        }
    }

    void string(State& st, PyObject* o, bool scan) {
        if (scan && value_patterns_) {
            st.spans.clear();
            with_units(o, [&](auto* s, std::size_t n) {
                redact::find_value_spans(s, n, value_patterns_, st.spans, &keys_);
            });
            if (!st.spans.empty()) {
                with_units(o, [&](auto* s, std::size_t n) {
                    st.writer.string_redacted(s, n, st.spans, redacted_);
                });
                return;
            }
        }
        with_units(o, [&](auto* s, std::size_t n) { st.writer.string(s, n); });
    }

    static void integer(State& st, PyObject* o) {
        int overflow = 0;
        long long v = PyLong_AsLongLongAndOverflow(o, &overflow);
        if (v == -1 && PyErr_Occurred()) throw py::error_already_set();
        if (!overflow) {
            st.writer.integer(v);
            return;
        }
        // Beyond 64 bits: int's own repr, as json.dumps does (also for int subclasses).
        py::object text = py::reinterpret_steal<py::object>(PyLong_Type.tp_repr(o));
        if (!text) throw py::error_already_set();
        Py_ssize_t n;
        const char* p = PyUnicode_AsUTF8AndSize(text.ptr(), &n);
        if (!p) throw py::error_already_set();
        st.writer.integer_text(std::string_view(p, static_cast<std::size_t>(n)));
    }

    // Enters a container; false (and a placeholder written) for a cycle or too deep.
    bool enter(State& st, PyObject* o) {
        for (PyObject* p : st.path) {
            if (p == o) {
                st.writer.string_utf8_ascii(circular_);
                return false;
            }
        }
        if (st.path.size() >= max_depth_) {
            st.writer.string_utf8_ascii(too_deep_);
            return false;
        }
        st.path.push_back(o);
        return true;
    }

    void array(State& st, PyObject* o) {
        if (!enter(st, o)) return;
        py::object hold_seq = py::reinterpret_borrow<py::object>(o);
        st.writer.begin_array();
        // A (key, value) pair whose key looks secret, as in a list of headers or
        // dict.items(): the key stays, the value is redacted.
        if (PySequence_Fast_GET_SIZE(o) == 2 && !keys_.empty()) {
            PyObject* first = PySequence_Fast_GET_ITEM(o, 0);
            if ((PyUnicode_Check(first) || PyBytes_Check(first)) && key_is_secret(first)) {
                py::object hold = py::reinterpret_borrow<py::object>(first);
                value(st, first, true);
                st.writer.string_utf8_ascii(redacted_);
                st.writer.end_array();
                st.path.pop_back();
                return;
            }
        }
        // Index access each time: a default function may mutate the list meanwhile.
        for (Py_ssize_t i = 0; i < PySequence_Fast_GET_SIZE(o); ++i) {
            PyObject* item = PySequence_Fast_GET_ITEM(o, i);
            py::object hold = py::reinterpret_borrow<py::object>(item);
            value(st, item, true);
        }
        st.writer.end_array();
        st.path.pop_back();
    }

    bool key_is_secret(PyObject* k) {
        if (keys_.empty()) return false;
        if (PyBytes_Check(k)) {
            return keys_.matches(reinterpret_cast<const std::uint8_t*>(PyBytes_AS_STRING(k)),
                                 static_cast<std::size_t>(PyBytes_GET_SIZE(k)));
        }
        PyObject* cached = PyDict_GetItemWithError(key_cache_.ptr(), k);
        if (cached) return cached == Py_True;
        if (PyErr_Occurred()) throw py::error_already_set();
        bool secret = with_units(k, [&](auto* s, std::size_t n) { return keys_.matches(s, n); });
        // Keys repeat from record to record; the cache is bounded against key floods.
        if (PyDict_GET_SIZE(key_cache_.ptr()) >= 4096) PyDict_Clear(key_cache_.ptr());
        if (PyUnicode_CheckExact(k)) set(key_cache_.ptr(), k, secret ? Py_True : Py_False);
        return secret;
    }

    void object(State& st, PyObject* o, PyObject* noscan) {
        if (!enter(st, o)) return;
        py::object hold_dict = py::reinterpret_borrow<py::object>(o);
        st.writer.begin_object();
        PyObject *kb, *vb;
        Py_ssize_t pos = 0;
        // Keys and values are held while written: a default function could mutate the
        // dict meanwhile (PyDict_Next stays memory-safe; the output is then best effort).
        while (PyDict_Next(o, &pos, &kb, &vb)) {
            py::object k = py::reinterpret_borrow<py::object>(kb);
            py::object v = py::reinterpret_borrow<py::object>(vb);
            bool secret = false;
            if (PyUnicode_Check(kb)) {
                with_units(kb, [&](auto* s, std::size_t len) { st.writer.key(s, len); });
                secret = key_is_secret(kb);
            } else {
                key_other(st, kb);
                secret = PyBytes_Check(kb) && key_is_secret(kb);
            }
            if (secret) {
                st.writer.string_utf8_ascii(redacted_);
                continue;
            }
            bool scan = true;
            if (noscan) {
                int c = PySet_Contains(noscan, kb);
                if (c < 0) throw py::error_already_set();
                scan = c == 0;
            }
            value(st, vb, scan);
        }
        st.writer.end_object();
        st.path.pop_back();
    }

    // Non-str keys as json.dumps writes them; keys json.dumps rejects (tuples, objects)
    // are written as their str() instead of failing the whole line.
    void key_other(State& st, PyObject* k) {
        if (PyFloat_Check(k)) {
            double d = PyFloat_AS_DOUBLE(k);
            if (std::isnan(d)) {
                st.writer.key_ascii("NaN");
            } else if (std::isinf(d)) {
                st.writer.key_ascii(d > 0 ? "Infinity" : "-Infinity");
            } else {
                char buf[40];
                st.writer.key_ascii(std::string_view(buf, json::format_double_repr(d, buf)));
            }
        } else if (k == Py_True) {
            st.writer.key_ascii("true");
        } else if (k == Py_False) {
            st.writer.key_ascii("false");
        } else if (k == Py_None) {
            st.writer.key_ascii("null");
        } else if (PyLong_Check(k)) {
            py::object text = py::reinterpret_steal<py::object>(PyLong_Type.tp_repr(k));
            if (!text) throw py::error_already_set();
            with_units(text.ptr(), [&](auto* s, std::size_t n) { st.writer.key(s, n); });
        } else {
            py::object text = fallback_text(k);
            with_units(text.ptr(), [&](auto* s, std::size_t n) { st.writer.key(s, n); });
        }
    }

    // python-json-logger's unknown_default: str(), else repr(), else a fixed marker.
    static py::object fallback_text(PyObject* o) {
        for (auto fn : {PyObject_Str, PyObject_Repr}) {
            PyObject* s = fn(o);
            if (s && PyUnicode_Check(s)) return py::reinterpret_steal<py::object>(s);
            Py_XDECREF(s);
            clear_exception_or_rethrow();
        }
        return py::str("__could_not_encode__");
    }

    // Swallows an Exception; lets KeyboardInterrupt, SystemExit and friends through.
    static void clear_exception_or_rethrow() {
        if (!PyErr_Occurred()) return;
        if (PyErr_ExceptionMatches(PyExc_Exception)) {
            PyErr_Clear();
            return;
        }
        throw py::error_already_set();
    }

    // Exact datetime/date/time whose tzinfo is None or UTC, written without a call into
    // Python (isoformat() with a tzinfo is mostly the tzinfo's utcoffset() in Python).
    static bool iso_fast(State& st, PyObject* o) {
        char buf[48];
        std::size_t n = 0;
        PyObject* tz = Py_None;
        if (PyDateTime_CheckExact(o)) {
            tz = PyDateTime_DATE_GET_TZINFO(o);
            if (tz != Py_None && tz != PyDateTime_TimeZone_UTC) return false;
            n = json::format_iso_date(PyDateTime_GET_YEAR(o), PyDateTime_GET_MONTH(o),
                                      PyDateTime_GET_DAY(o), buf);
            buf[n++] = 'T';
            n += json::format_iso_time(PyDateTime_DATE_GET_HOUR(o), PyDateTime_DATE_GET_MINUTE(o),
                                       PyDateTime_DATE_GET_SECOND(o),
                                       PyDateTime_DATE_GET_MICROSECOND(o), buf + n);
        } else if (PyDate_CheckExact(o)) {
            n = json::format_iso_date(PyDateTime_GET_YEAR(o), PyDateTime_GET_MONTH(o),
                                      PyDateTime_GET_DAY(o), buf);
        } else if (PyTime_CheckExact(o)) {
            tz = PyDateTime_TIME_GET_TZINFO(o);
            if (tz != Py_None && tz != PyDateTime_TimeZone_UTC) return false;
            n = json::format_iso_time(PyDateTime_TIME_GET_HOUR(o), PyDateTime_TIME_GET_MINUTE(o),
                                      PyDateTime_TIME_GET_SECOND(o),
                                      PyDateTime_TIME_GET_MICROSECOND(o), buf);
        } else {
            return false;
        }
        if (tz != Py_None) {
            std::memcpy(buf + n, "+00:00", 6);
            n += 6;
        }
        st.writer.string_utf8_ascii(std::string_view(buf, n));
        return true;
    }

    static bool uuid_fast(State& st, PyObject* o) {
        py::object v = py::reinterpret_steal<py::object>(PyObject_GetAttr(o, s_int.ptr()));
        if (!v || !PyLong_CheckExact(v.ptr())) {
            PyErr_Clear();
            return false;
        }
        unsigned long long low = PyLong_AsUnsignedLongLongMask(v.ptr());
        py::object sixty_four = py::reinterpret_steal<py::object>(PyLong_FromLong(64));
        py::object hi_obj =
            py::reinterpret_steal<py::object>(PyNumber_Rshift(v.ptr(), sixty_four.ptr()));
        if (!hi_obj) throw py::error_already_set();
        unsigned long long high = PyLong_AsUnsignedLongLong(hi_obj.ptr());
        if (high == static_cast<unsigned long long>(-1) && PyErr_Occurred()) {
            PyErr_Clear();  // not a 128-bit value: let str() decide
            return false;
        }
        char buf[36];
        st.writer.string_utf8_ascii(std::string_view(buf, json::format_uuid(high, low, buf)));
        return true;
    }

    static void base64(State& st, PyObject* o) {
        const char* data = PyBytes_Check(o) ? PyBytes_AS_STRING(o) : PyByteArray_AS_STRING(o);
        Py_ssize_t n = PyBytes_Check(o) ? PyBytes_GET_SIZE(o) : PyByteArray_GET_SIZE(o);
        st.scratch.clear();
        json::append_base64url(reinterpret_cast<const std::uint8_t*>(data),
                               static_cast<std::size_t>(n), st.scratch);
        st.writer.string_utf8_ascii(st.scratch);
    }

    void other(State& st, PyObject* o) {
        if (PyDict_GET_SIZE(fast_types_.ptr()) != 0) {
            PyObject* kind = PyDict_GetItemWithError(fast_types_.ptr(), (PyObject*)Py_TYPE(o));
            if (!kind && PyErr_Occurred()) throw py::error_already_set();
            if (kind) {
                long k = PyLong_AsLong(kind);
                // Dates, UUIDs and base64 text can hold no query parameter: only the other
                // patterns need the text scanned.
                const bool plain = (value_patterns_ & ~unsigned{redact::kQuery}) == 0;
                if (k == kIsoformat && plain && iso_fast(st, o)) return;
                if (k == kUuid && plain && uuid_fast(st, o)) return;
                if (k == kBase64 && plain) {
                    base64(st, o);
                    return;
                }
                PyObject* s = k == kIsoformat ? PyObject_CallMethodNoArgs(o, s_isoformat.ptr())
                                              : PyObject_Str(o);
                if (s && PyUnicode_Check(s)) {
                    py::object hold = py::reinterpret_steal<py::object>(s);
                    string(st, s, true);
                    return;
                }
                Py_XDECREF(s);
                clear_exception_or_rethrow();
            }
        }
        // The default function's result is written in place of the object, with the
        // object on the path so a default that returns a structure containing it (or the
        // object itself) ends as a placeholder instead of recursing forever.
        if (!enter(st, o)) return;
        PyObject* r = PyObject_CallOneArg(default_fn_.ptr(), o);
        if (r) {
            py::object hold = py::reinterpret_steal<py::object>(r);
            value(st, r, true);
        } else {
            clear_exception_or_rethrow();
            py::object text = fallback_text(o);
            string(st, text.ptr(), true);
        }
        st.path.pop_back();
    }

    WriterOptions options_;
    py::object default_fn_;
    py::dict fast_types_;
    redact::KeyMatcher keys_;
    unsigned value_patterns_;
    std::string redacted_, circular_, too_deep_;
    std::size_t max_depth_;
    py::dict key_cache_;
    std::unique_ptr<State> spare_;

    bool configured_ = false;
    py::dict template_;
    py::list required_;
    py::dict rename_;
    py::object skip_ = py::reinterpret_steal<py::object>(PyFrozenSet_New(nullptr));
    py::object context_var_ = py::none();
    py::object timestamp_key_ = py::none();
    py::list keep_missing_;
    std::string prefix_;
    bool needs_asctime_ = false;
    py::object noscan_ = py::reinterpret_steal<py::object>(PyFrozenSet_New(nullptr));
    py::object request_key_ = py::none();
    py::object context_resolver_ = py::none();
    struct TimeCache {
        std::time_t sec = 0;
        int kind = 0;
        py::object fmt;
        py::object text;
    } time_cache_;
    std::vector<PyObject*> skip_table_ = std::vector<PyObject*>(16, nullptr);
};

}  // namespace

void register_log(pybind11::module_& m) {
    Encoder::init_statics();
    py::class_<Encoder>(m, "LogEncoder",
                        "JSON encoder and record formatter behind django_fastcache.log")
        .def(py::init<bool, std::optional<std::string>, py::object, py::dict,
                      const std::vector<std::string>&, unsigned, std::string, std::string,
                      std::string, int, const std::vector<std::string>&>(),
             py::arg("ensure_ascii"), py::arg("indent"), py::arg("default"), py::arg("fast_types"),
             py::arg("redact_keys"), py::arg("redact_values"), py::arg("redacted"),
             py::arg("circular"), py::arg("too_deep"), py::arg("max_depth"),
             py::arg("redact_words") = std::vector<std::string>{})
        .def("configure_record", &Encoder::configure_record, py::arg("template"),
             py::arg("required"), py::arg("rename"), py::arg("skip"), py::arg("context_var"),
             py::arg("timestamp_key"), py::arg("keep_missing"), py::arg("prefix"),
             py::arg("needs_asctime"), py::arg("noscan"), py::arg("request_key"),
             py::arg("context_resolver") = py::none())
        .def("redact_string", &Encoder::redact_string, py::arg("text"),
             py::arg("bare_query") = false)
        .def("dumps", &Encoder::dumps, py::arg("obj"), py::arg("noscan") = py::none())
        .def("add_fields", &Encoder::add_fields, py::arg("formatter"), py::arg("log_data"),
             py::arg("record"), py::arg("message_dict"))
        .def("format", &Encoder::format, py::arg("formatter"), py::arg("record"));
    m.def(
        "format_float_repr",
        [](double v) {
            if (!std::isfinite(v)) throw py::value_error("only finite floats have a repr here");
            char buf[40];
            return std::string(buf, json::format_double_repr(v, buf));
        },
        "Python's repr() of a finite float, computed by the C++ core (exposed for tests).");
    m.def(
        "find_redaction_spans",
        [](py::str s, unsigned patterns) {
            std::vector<Span> spans;
            with_units(s.ptr(), [&](auto* p, std::size_t n) {
                redact::find_value_spans(p, n, patterns, spans);
            });
            std::vector<std::pair<std::size_t, std::size_t>> out;
            for (auto& sp : spans) out.emplace_back(sp.begin, sp.end);
            return out;
        },
        py::arg("text"), py::arg("patterns"),
        "The [begin, end) spans the C++ core would redact (exposed for tests).");
}

}  // namespace fastcache::bindings
