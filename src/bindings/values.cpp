// Python values <-> the core's wire format, and the L1's snapshots; see values.hpp.
// Types are matched exactly (a str subclass such as Django's SafeString is not a str
// here), so whatever the codec cannot rebuild exactly goes through pickle instead.
#include "bindings/values.hpp"

#include <Python.h>
#include <datetime.h>

#include <charconv>
#include <cstring>
#include <random>
#include <string>
#include <unordered_map>
#include <utility>
#include <vector>

#include "core/codec.hpp"

namespace py = pybind11;

namespace fastcache::bindings {

namespace {

using codec::Tag;

struct Py {
    PyTypeObject* decimal = nullptr;
    PyTypeObject* uuid = nullptr;
    PyTypeObject* timezone = nullptr;
    PyTypeObject* zoneinfo = nullptr;
    PyObject* pickle_dumps = nullptr;
    PyObject* pickle_loads = nullptr;
    PyObject* zlib_compress = nullptr;
    PyObject* zlib_decompressobj = nullptr;
    PyObject* hmac_digest = nullptr;
    PyObject* compare_digest = nullptr;
    PyObject* sha256 = nullptr;  // the string "sha256"
    PyObject* decode_error = nullptr;
    PyObject* signature_error = nullptr;
    PyObject* serialization_error = nullptr;
    PyObject* too_large_error = nullptr;
    PyObject* compress = nullptr;    // _bodies.compress(id, data, level): zstd, lz4
    PyObject* decompress = nullptr;  // _bodies.decompress(id, data, limit)
    PyObject* json_dumps = nullptr;  // _bodies.json_dumps(value) -> bytes | None
    PyObject* json_loads = nullptr;
    PyObject* sizeof_name = nullptr;  // the string "__sizeof__"
    PyObject* sixty_four = nullptr;   // the int 64
    PyObject* empty_tuple = nullptr;
    PyObject* int_name = nullptr;  // "int" and "is_safe": the slots of a UUID
    PyObject* is_safe_name = nullptr;
    PyObject* safe_uuid_unknown = nullptr;  // uuid.SafeUUID.unknown, what UUID(bytes=) sets
};

// Filled once at import and never released: these live as long as the interpreter.
Py g;

enum class Kind : std::uint8_t {
    None,
    Bool,
    Int,
    Float,
    Str,
    Bytes,
    ByteArray,
    List,
    Tuple,
    Dict,
    Set,
    FrozenSet,
    DateTime,
    Date,
    Time,
    TimeDelta,
    Decimal,
    Uuid,
    Other,
};

inline Kind classify(PyObject* o) {
    PyTypeObject* t = Py_TYPE(o);
    if (t == &PyUnicode_Type) return Kind::Str;
    if (t == &PyLong_Type) return Kind::Int;
    if (t == &PyDict_Type) return Kind::Dict;
    if (t == &PyList_Type) return Kind::List;
    if (o == Py_None) return Kind::None;
    if (t == &PyBool_Type) return Kind::Bool;
    if (t == &PyFloat_Type) return Kind::Float;
    if (t == &PyTuple_Type) return Kind::Tuple;
    if (t == &PyBytes_Type) return Kind::Bytes;
    if (t == PyDateTimeAPI->DateTimeType) return Kind::DateTime;
    if (t == PyDateTimeAPI->DateType) return Kind::Date;
    if (t == PyDateTimeAPI->TimeType) return Kind::Time;
    if (t == PyDateTimeAPI->DeltaType) return Kind::TimeDelta;
    if (t == g.decimal) return Kind::Decimal;
    if (t == g.uuid) return Kind::Uuid;
    if (t == &PySet_Type) return Kind::Set;
    if (t == &PyFrozenSet_Type) return Kind::FrozenSet;
    if (t == &PyByteArray_Type) return Kind::ByteArray;
    return Kind::Other;
}

inline bool is_immutable_leaf(Kind k) {
    switch (k) {
        case Kind::List:
        case Kind::Dict:
        case Kind::Set:
        case Kind::ByteArray:
        case Kind::Tuple:
        case Kind::FrozenSet:
        case Kind::Other:
            return false;
        default:
            return true;
    }
}

[[noreturn]] void throw_python() { throw py::error_already_set(); }

// Raises `type` from the current Python exception (if any) as its cause.
[[noreturn]] void raise_chained(PyObject* type, const char* message) {
    if (PyErr_Occurred()) {
        PyObject *et, *ev, *tb;
        PyErr_Fetch(&et, &ev, &tb);
        PyErr_NormalizeException(&et, &ev, &tb);
        PyErr_SetString(type, message);
        PyObject *nt, *nv, *ntb;
        PyErr_Fetch(&nt, &nv, &ntb);
        PyErr_NormalizeException(&nt, &nv, &ntb);
        PyException_SetCause(nv, ev);  // steals ev
        Py_XDECREF(et);
        Py_XDECREF(tb);
        PyErr_Restore(nt, nv, ntb);
    } else {
        PyErr_SetString(type, message);
    }
    throw_python();
}

// Calls f(item) for each item of an iterable (sets: their C iteration API is private).
template <class F>
void for_each(PyObject* iterable, F&& f) {
    py::object it = py::reinterpret_steal<py::object>(PyObject_GetIter(iterable));
    if (!it) throw_python();
    while (PyObject* raw = PyIter_Next(it.ptr())) {
        py::object item = py::reinterpret_steal<py::object>(raw);
        f(item.ptr());
    }
    if (PyErr_Occurred()) throw_python();
}

// ----------------------------------------------------------------------------- encode

// Why a value could not be written as msgpack: it is then pickled as a whole.
struct NeedsPickle {};

bool tz_of(PyObject* tzinfo, codec::TzInfo& tz, py::object& keep) {
    if (tzinfo == Py_None) return true;
    PyTypeObject* t = Py_TYPE(tzinfo);
    if (t == g.timezone) {
        py::object offset = py::reinterpret_steal<py::object>(
            PyObject_CallMethod(tzinfo, "utcoffset", "O", Py_None));
        if (!offset) throw_python();
        tz.kind = codec::TzInfo::Fixed;
        tz.offset_us = (static_cast<std::int64_t>(PyDateTime_DELTA_GET_DAYS(offset.ptr())) * 86400 +
                        PyDateTime_DELTA_GET_SECONDS(offset.ptr())) *
                           1000000LL +
                       PyDateTime_DELTA_GET_MICROSECONDS(offset.ptr());
        // Keep a custom name only: timezone(offset) and timezone(offset, name) differ.
        py::object plain = py::reinterpret_steal<py::object>(
            PyDateTimeAPI->TimeZone_FromTimeZone(offset.ptr(), nullptr));
        if (!plain) throw_python();
        py::object name =
            py::reinterpret_steal<py::object>(PyObject_CallMethod(tzinfo, "tzname", "O", Py_None));
        py::object plain_name = py::reinterpret_steal<py::object>(
            PyObject_CallMethod(plain.ptr(), "tzname", "O", Py_None));
        if (!name || !plain_name) throw_python();
        int same = PyObject_RichCompareBool(name.ptr(), plain_name.ptr(), Py_EQ);
        if (same < 0) throw_python();
        if (!same) {
            Py_ssize_t n;
            const char* s = PyUnicode_AsUTF8AndSize(name.ptr(), &n);
            if (!s) {
                PyErr_Clear();
                return false;
            }
            keep = name;
            tz.name = std::string_view(s, n);
        }
        return true;
    }
    if (t == g.zoneinfo) {
        py::object key = py::reinterpret_steal<py::object>(PyObject_GetAttrString(tzinfo, "key"));
        if (!key) throw_python();
        if (!PyUnicode_CheckExact(key.ptr())) return false;  // ZoneInfo.from_file: no key
        Py_ssize_t n;
        const char* s = PyUnicode_AsUTF8AndSize(key.ptr(), &n);
        if (!s || n == 0 || n > 255) {
            PyErr_Clear();
            return false;
        }
        keep = key;
        tz.kind = codec::TzInfo::Zone;
        tz.name = std::string_view(s, n);
        return true;
    }
    return false;  // pytz, dateutil, custom tzinfo: only pickle rebuilds those exactly
}

codec::TimeOfDay time_of(PyObject* o, bool is_datetime) {
    if (is_datetime) {
        return {PyDateTime_DATE_GET_HOUR(o), PyDateTime_DATE_GET_MINUTE(o),
                PyDateTime_DATE_GET_SECOND(o), PyDateTime_DATE_GET_MICROSECOND(o),
                PyDateTime_DATE_GET_FOLD(o)};
    }
    return {PyDateTime_TIME_GET_HOUR(o), PyDateTime_TIME_GET_MINUTE(o),
            PyDateTime_TIME_GET_SECOND(o), PyDateTime_TIME_GET_MICROSECOND(o),
            PyDateTime_TIME_GET_FOLD(o)};
}

// Keys of one dict (or items of one set) that share a hash are compared with each other
// on every insertion: n of them cost n * n / 2 comparisons (a set of 32,000 ints that are
// multiples of 2^61 - 1, all hashing to 0, took 6.5 s to build). Honest keys almost never
// share a hash (-1 and -2 do), so a reader refuses more than kMax with one hash in one
// container before inserting them, and the writer pickles such a value instead (a signed
// pickle is not checked: only a holder of the key can write one). Keys that cannot collide
// are not counted (counting them doubled the cost of an int-keyed dict): str and bytes,
// whose hashes are keyed by the process's random seed, and ints below 2^61 - 1 in size,
// which are their own hash (None and booleans are single objects).
class SameHashCount {
public:
    static constexpr std::uint32_t kMax = 8;

    // Counts `key` (borrowed) in the container numbered `serial`: 1, or 0 when it makes
    // more than kMax keys there with one hash, or -1 with a Python error (unhashable).
    int add(std::uint64_t serial, PyObject* key) {
        if (cannot_collide(key)) return 1;
        Py_hash_t h = PyObject_Hash(key);
        if (h == -1 && PyErr_Occurred()) return -1;
        return ++counts_[{serial, h}] > kMax ? 0 : 1;
    }

private:
    static bool cannot_collide(PyObject* v) {
        if (PyUnicode_CheckExact(v) || PyBytes_CheckExact(v) || v == Py_None || PyBool_Check(v))
            return true;
        if (!PyLong_CheckExact(v)) return false;
        int overflow = 0;
        long long n = PyLong_AsLongLongAndOverflow(v, &overflow);
        constexpr long long kModulus = (1LL << 61) - 1;  // CPython's numeric hash modulus
        return !overflow && n > -kModulus && n < kModulus;
    }

    struct Mix {
        std::uint64_t seed;
        std::size_t operator()(const std::pair<std::uint64_t, Py_hash_t>& k) const {
            // splitmix64's finalizer, seeded per process: the key's hash is the input's
            // choice, so this table's own buckets must not be.
            std::uint64_t x =
                seed ^ (k.first * 0x9e3779b97f4a7c15ULL) ^ static_cast<std::uint64_t>(k.second);
            x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ULL;
            x = (x ^ (x >> 27)) * 0x94d049bb133111ebULL;
            return static_cast<std::size_t>(x ^ (x >> 31));
        }
    };

    static std::uint64_t process_seed() {
        static const std::uint64_t seed =
            (std::uint64_t(std::random_device{}()) << 32) ^ std::random_device{}();
        return seed;
    }

    std::unordered_map<std::pair<std::uint64_t, Py_hash_t>, std::uint32_t, Mix> counts_{
        0, Mix{process_seed()}};
};

class Encoder {
public:
    explicit Encoder(codec::Writer& w) : w_(w) {}

    // Throws NeedsPickle when some part has no exact msgpack form.
    void value(PyObject* o, int depth) {
        switch (classify(o)) {
            case Kind::None:
                return w_.nil();
            case Kind::Bool:
                return w_.boolean(o == Py_True);
            case Kind::Int:
                return integer(o);
            case Kind::Float:
                return w_.float64(PyFloat_AS_DOUBLE(o));
            case Kind::Str:
                return w_.str(utf8(o));
            case Kind::Bytes:
                return w_.bin(std::string_view(PyBytes_AS_STRING(o), PyBytes_GET_SIZE(o)));
            case Kind::ByteArray:
                return w_.bin(std::string_view(PyByteArray_AS_STRING(o), PyByteArray_GET_SIZE(o)),
                              Tag::ByteArray);
            case Kind::List:
                return sequence(o, depth, Tag::None);
            case Kind::Tuple:
                return sequence(o, depth, Tag::Tuple);
            case Kind::Dict:
                return dict(o, depth);
            case Kind::Set:
                return set(o, depth, Tag::Set);
            case Kind::FrozenSet:
                return set(o, depth, Tag::FrozenSet);
            case Kind::DateTime: {
                codec::TzInfo tz;
                py::object keep;
                if (!tz_of(PyDateTime_DATE_GET_TZINFO(o), tz, keep)) throw NeedsPickle{};
                return w_.datetime(date_of(o), time_of(o, true), tz);
            }
            case Kind::Date:
                return w_.date(date_of(o));
            case Kind::Time: {
                codec::TzInfo tz;
                py::object keep;
                if (!tz_of(PyDateTime_TIME_GET_TZINFO(o), tz, keep)) throw NeedsPickle{};
                return w_.time(time_of(o, false), tz);
            }
            case Kind::TimeDelta:
                return w_.timedelta({PyDateTime_DELTA_GET_DAYS(o), PyDateTime_DELTA_GET_SECONDS(o),
                                     PyDateTime_DELTA_GET_MICROSECONDS(o)});
            case Kind::Decimal: {
                py::object s = py::reinterpret_steal<py::object>(PyObject_Str(o));
                if (!s) throw_python();
                std::string_view text = utf8(s.ptr());
                if (text.size() > codec::kMaxDecimalText) throw NeedsPickle{};  // see the reader
                return w_.decimal(text);
            }
            case Kind::Uuid: {
                py::object b =
                    py::reinterpret_steal<py::object>(PyObject_GetAttrString(o, "bytes"));
                if (!b) throw_python();
                if (!PyBytes_Check(b.ptr()) || PyBytes_GET_SIZE(b.ptr()) != 16) throw NeedsPickle{};
                std::uint8_t raw[16];
                std::memcpy(raw, PyBytes_AS_STRING(b.ptr()), 16);
                return w_.uuid(raw);
            }
            case Kind::Other:
                throw NeedsPickle{};
        }
    }

private:
    static codec::Date date_of(PyObject* o) {
        return {PyDateTime_GET_YEAR(o), PyDateTime_GET_MONTH(o), PyDateTime_GET_DAY(o)};
    }

    // Strings with lone surrogates have no UTF-8 form; pickle keeps them.
    static std::string_view utf8(PyObject* o) {
        Py_ssize_t n;
        const char* s = PyUnicode_AsUTF8AndSize(o, &n);
        if (!s) {
            PyErr_Clear();
            throw NeedsPickle{};
        }
        return std::string_view(s, n);
    }

    void integer(PyObject* o) {
        int overflow = 0;
        long long v = PyLong_AsLongLongAndOverflow(o, &overflow);
        if (!overflow) return w_.int64(v);
        if (overflow > 0) {
            unsigned long long u = PyLong_AsUnsignedLongLong(o);
            if (!PyErr_Occurred()) return w_.uint64(u);
            PyErr_Clear();
        }
        py::object s = py::reinterpret_steal<py::object>(PyObject_Str(o));
        if (!s) {  // beyond sys.int_info.str_digits_check_threshold: pickle handles it
            PyErr_Clear();
            throw NeedsPickle{};
        }
        w_.bigint(utf8(s.ptr()));
    }

    void sequence(PyObject* o, int depth, Tag tag) {
        if (depth >= codec::kMaxDepth) throw NeedsPickle{};
        bool is_list = tag == Tag::None;
        Py_ssize_t n = is_list ? PyList_GET_SIZE(o) : PyTuple_GET_SIZE(o);
        w_.begin_array(static_cast<std::uint32_t>(n), tag);
        for (Py_ssize_t i = 0; i < n; ++i) {
            if (is_list && PyList_GET_SIZE(o) != n) changed();
            value(is_list ? PyList_GET_ITEM(o, i) : PyTuple_GET_ITEM(o, i), depth + 1);
        }
    }

    void dict(PyObject* o, int depth) {
        if (depth >= codec::kMaxDepth) throw NeedsPickle{};
        Py_ssize_t n = PyDict_GET_SIZE(o), pos = 0, seen = 0;
        std::uint64_t serial = ++serials_;
        PyObject *k, *v;
        w_.begin_map(static_cast<std::uint32_t>(n));
        while (PyDict_Next(o, &pos, &k, &v)) {
            if (++seen > n) changed();
            key(serial, k);
            value(k, depth + 1);
            value(v, depth + 1);
        }
        if (seen != n) changed();
    }

    void set(PyObject* o, int depth, Tag tag) {
        if (depth >= codec::kMaxDepth) throw NeedsPickle{};
        Py_ssize_t n = PySet_GET_SIZE(o), seen = 0;
        std::uint64_t serial = ++serials_;
        w_.begin_array(static_cast<std::uint32_t>(n), tag);
        for_each(o, [&](PyObject* item) {
            if (++seen > n) changed();
            key(serial, item);
            value(item, depth + 1);
        });
        if (seen != n) changed();
    }

    [[noreturn]] static void changed() {
        PyErr_SetString(PyExc_RuntimeError, "container changed size while being cached");
        throw_python();
    }

    // A reader refuses a container whose keys share a hash too often: pickle it instead.
    void key(std::uint64_t serial, PyObject* k) {
        int rc = same_hash_.add(serial, k);
        if (rc < 0) throw_python();
        if (rc == 0) throw NeedsPickle{};
    }

    codec::Writer& w_;
    std::uint64_t serials_ = 0;
    SameHashCount same_hash_;
};

py::bytes pickle_dumps(py::handle value, int protocol) {
    py::object out = py::reinterpret_steal<py::object>(
        PyObject_CallFunction(g.pickle_dumps, "Oi", value.ptr(), protocol));
    if (!out) throw_python();
    return py::reinterpret_steal<py::bytes>(out.release());
}

[[noreturn]] void forbid(py::handle value) {
    std::string message = "cannot cache a value of type '";
    message += Py_TYPE(value.ptr())->tp_name;
    message += "': it needs pickle and PICKLE is 'forbid'";
    PyErr_SetString(g.serialization_error, message.c_str());
    throw_python();
}

py::bytes mac_of(const std::string& signing_key, std::string_view header_and_body) {
    py::object key = py::bytes(signing_key);
    py::object msg = py::reinterpret_steal<py::object>(
        PyBytes_FromStringAndSize(header_and_body.data(), header_and_body.size()));
    py::object mac = py::reinterpret_steal<py::object>(
        PyObject_CallFunctionObjArgs(g.hmac_digest, key.ptr(), msg.ptr(), g.sha256, nullptr));
    if (!mac) throw_python();
    return py::reinterpret_steal<py::bytes>(mac.release());
}

thread_local codec::Writer tls_writer;

// ----------------------------------------------------------------------------- decode

// Builds Python objects from the core reader's events, without recursion: each open
// container is a frame; a finished value goes into the frame on top.
class Builder {
public:
    ~Builder() {
        for (Frame& f : stack_) {
            Py_XDECREF(f.container);
            Py_XDECREF(f.key);
        }
        Py_XDECREF(result_);
    }

    PyObject* take() {
        PyObject* r = result_;
        result_ = nullptr;
        return r;
    }

    void nil() { push(Py_NewRef(Py_None)); }
    void boolean(bool v) { push(Py_NewRef(v ? Py_True : Py_False)); }
    void int64(std::int64_t v) { push(check(PyLong_FromLongLong(v))); }
    void uint64(std::uint64_t v) { push(check(PyLong_FromUnsignedLongLong(v))); }
    void float64(double v) { push(check(PyFloat_FromDouble(v))); }
    void str(std::string_view s) {
        push(check(PyUnicode_DecodeUTF8(s.data(), static_cast<Py_ssize_t>(s.size()), "strict")));
    }
    void bin(std::string_view s, bool bytearray) {
        auto n = static_cast<Py_ssize_t>(s.size());
        push(check(bytearray ? PyByteArray_FromStringAndSize(s.data(), n)
                             : PyBytes_FromStringAndSize(s.data(), n)));
    }
    void begin_array(std::uint32_t n, Tag tag) {
        Frame f;
        f.size = n;
        f.tag = tag;
        f.container = check(tag == Tag::Tuple ? PyTuple_New(n) : PyList_New(n));
        f.serial = ++serials_;
        stack_.push_back(f);
    }
    void end_array() {
        Frame f = stack_.back();
        stack_.pop_back();
        PyObject* done = f.container;
        if (f.tag == Tag::Set || f.tag == Tag::FrozenSet) {
            done = f.tag == Tag::Set ? PySet_New(f.container) : PyFrozenSet_New(f.container);
            Py_DECREF(f.container);
            check(done);
        }
        push(done);
    }
    void begin_map(std::uint32_t n) {
        Frame f;
        f.size = n;
        f.is_map = true;
        f.container = check(PyDict_New());
        f.serial = ++serials_;
        stack_.push_back(f);
    }
    void end_map() {
        Frame f = stack_.back();
        stack_.pop_back();
        push(f.container);
    }
    void bigint(std::string_view digits) {
        std::string z(digits);
        push(check(PyLong_FromString(z.c_str(), nullptr, 10)));
    }
    void decimal(std::string_view text) {
        py::object s = py::reinterpret_steal<py::object>(check(
            PyUnicode_DecodeASCII(text.data(), static_cast<Py_ssize_t>(text.size()), "strict")));
        push(check(PyObject_CallOneArg(reinterpret_cast<PyObject*>(g.decimal), s.ptr())));
    }
    // UUID(bytes=...) runs Python code (about 1 us, ten times any other value): this
    // builds the same object as pickle does, object.__new__(UUID) and then its two slots,
    // so a body of UUIDs costs what a body of other small objects costs.
    void uuid(const unsigned char* raw) {
        std::uint64_t hi = 0, lo = 0;
        for (int i = 0; i < 8; ++i) hi = (hi << 8) | raw[i];
        for (int i = 8; i < 16; ++i) lo = (lo << 8) | raw[i];
        auto own = [](PyObject* o) { return py::reinterpret_steal<py::object>(check(o)); };
        py::object high = own(PyLong_FromUnsignedLongLong(hi));
        py::object shifted = own(PyNumber_Lshift(high.ptr(), g.sixty_four));
        py::object low = own(PyLong_FromUnsignedLongLong(lo));
        py::object n = own(PyNumber_Or(shifted.ptr(), low.ptr()));
        py::object u = own(PyBaseObject_Type.tp_new(g.uuid, g.empty_tuple, nullptr));
        if (PyObject_GenericSetAttr(u.ptr(), g.int_name, n.ptr()) < 0 ||
            PyObject_GenericSetAttr(u.ptr(), g.is_safe_name, g.safe_uuid_unknown) < 0) {
            throw_python();
        }
        push(u.release().ptr());
    }
    void date(const codec::Date& d) {
        push(check(PyDateTimeAPI->Date_FromDate(d.year, d.month, d.day, PyDateTimeAPI->DateType)));
    }
    void time(const codec::TimeOfDay& t, const codec::TzInfo& tz) {
        py::object tzinfo = make_tz(tz);
        push(check(PyDateTimeAPI->Time_FromTimeAndFold(t.hour, t.minute, t.second, t.microsecond,
                                                       tzinfo.ptr(), t.fold,
                                                       PyDateTimeAPI->TimeType)));
    }
    void datetime(const codec::Date& d, const codec::TimeOfDay& t, const codec::TzInfo& tz) {
        py::object tzinfo = make_tz(tz);
        push(check(PyDateTimeAPI->DateTime_FromDateAndTimeAndFold(
            d.year, d.month, d.day, t.hour, t.minute, t.second, t.microsecond, tzinfo.ptr(), t.fold,
            PyDateTimeAPI->DateTimeType)));
    }
    void timedelta(const codec::TimeDelta& td) {
        push(check(PyDateTimeAPI->Delta_FromDelta(td.days, td.seconds, td.microseconds, 1,
                                                  PyDateTimeAPI->DeltaType)));
    }

private:
    struct Frame {
        PyObject* container = nullptr;
        PyObject* key = nullptr;  // map: a key waiting for its value
        Py_ssize_t size = 0;
        Py_ssize_t filled = 0;
        Tag tag = Tag::None;
        bool is_map = false;
        std::uint64_t serial = 0;  // names the container in same_hash_
    };

    // Any failure to build a Python object is the input's fault: the core has already
    // checked the structure, so what is left is an invalid date, bad UTF-8, an unhashable
    // key, and the like.
    static PyObject* check(PyObject* o) {
        if (!o) raise_chained(g.decode_error, "invalid value in cached data");
        return o;
    }

    py::object make_tz(const codec::TzInfo& tz) {
        switch (tz.kind) {
            case codec::TzInfo::None:
                return py::none();
            case codec::TzInfo::Fixed: {
                // Shared with the previous datetime of the same offset, as the core counts.
                if (fixed_ && tz.offset_us == fixed_offset_ && tz.name == fixed_name_) {
                    return fixed_;
                }
                std::int64_t us = tz.offset_us;
                // timedelta normalizes; days may be negative, seconds and us are not.
                std::int64_t days = us / 86400000000LL;
                std::int64_t rem = us % 86400000000LL;
                if (rem < 0) {
                    rem += 86400000000LL;
                    --days;
                }
                if (days < -1 || days > 0) raise_chained(g.decode_error, "bad UTC offset");
                py::object delta =
                    py::reinterpret_steal<py::object>(check(PyDateTimeAPI->Delta_FromDelta(
                        static_cast<int>(days), static_cast<int>(rem / 1000000),
                        static_cast<int>(rem % 1000000), 1, PyDateTimeAPI->DeltaType)));
                py::object name;
                if (!tz.name.empty()) {
                    name = py::reinterpret_steal<py::object>(check(PyUnicode_DecodeUTF8(
                        tz.name.data(), static_cast<Py_ssize_t>(tz.name.size()), "strict")));
                }
                fixed_ =
                    py::reinterpret_steal<py::object>(check(PyDateTimeAPI->TimeZone_FromTimeZone(
                        delta.ptr(), name ? name.ptr() : nullptr)));
                fixed_offset_ = tz.offset_us;
                fixed_name_.assign(tz.name);
                return fixed_;
            }
            case codec::TzInfo::Zone: {
                // ZoneInfo(key) caches zones itself, but each call still costs a key string
                // and a lookup: a body's datetimes mostly share one zone.
                if (zone_ && tz.name == zone_key_) return zone_;
                py::object key = py::reinterpret_steal<py::object>(check(PyUnicode_DecodeUTF8(
                    tz.name.data(), static_cast<Py_ssize_t>(tz.name.size()), "strict")));
                zone_ = py::reinterpret_steal<py::object>(
                    check(PyObject_CallOneArg(reinterpret_cast<PyObject*>(g.zoneinfo), key.ptr())));
                zone_key_.assign(tz.name);
                return zone_;
            }
        }
        raise_chained(g.decode_error, "bad tzinfo");
    }

    void count_hash(const Frame& f, PyObject* v) {  // borrows v
        int rc = same_hash_.add(f.serial, v);
        if (rc < 0) raise_chained(g.decode_error, "unhashable key in cached data");
        if (rc == 0) {
            throw DecodeError("more than " + std::to_string(SameHashCount::kMax) +
                              " keys of one dict or set share a hash (a hash-flooding value)");
        }
    }

    void push(PyObject* v) {  // steals v
        if (stack_.empty()) {
            result_ = v;
            return;
        }
        Frame& f = stack_.back();
        if ((f.is_map && !f.key) || f.tag == Tag::Set || f.tag == Tag::FrozenSet) {
            try {
                count_hash(f, v);
            } catch (...) {
                Py_DECREF(v);
                throw;
            }
        }
        if (f.is_map) {
            if (!f.key) {
                f.key = v;
                return;
            }
            int rc = PyDict_SetItem(f.container, f.key, v);
            Py_DECREF(v);
            Py_CLEAR(f.key);
            if (rc < 0) raise_chained(g.decode_error, "unhashable key in cached data");
            return;
        }
        if (f.tag == Tag::Tuple) {
            PyTuple_SET_ITEM(f.container, f.filled++, v);
        } else {
            PyList_SET_ITEM(f.container, f.filled++, v);
        }
    }

    std::vector<Frame> stack_;
    PyObject* result_ = nullptr;
    std::uint64_t serials_ = 0;
    SameHashCount same_hash_;
    py::object zone_;  // the last ZoneInfo built, and its key
    std::string zone_key_;
    py::object fixed_;  // the last fixed-offset timezone built, its offset and name
    std::int64_t fixed_offset_ = 0;
    std::string fixed_name_;
};

// Pauses CPython's cyclic collector while a body is built. The builder makes a tree of
// new objects that cannot hold a cycle, so a collection in between frees nothing, yet a
// body of many small containers would trigger one every 700 of them: a 1 MiB body of
// empty lists took 4x longer with the collector on, and in a process with a large heap
// (a full test run) an older-generation collection made one JSON body cost 170 ms.
class GcPause {
public:
    GcPause() : was_enabled_(PyGC_Disable()) {}
    ~GcPause() {
        if (was_enabled_) PyGC_Enable();
    }
    GcPause(const GcPause&) = delete;
    GcPause& operator=(const GcPause&) = delete;

private:
    int was_enabled_;
};

py::object decode_body(std::string_view body, std::uint64_t max_objects) {
    Builder b;
    {
        GcPause pause;
        codec::read_body(body, b, max_objects);  // DecodeError (C++) or error_already_set (a sink)
    }
    return py::reinterpret_steal<py::object>(b.take());
}

// ----------------------------------------------------------------------------- snapshot

// What CPython itself says `o` occupies (its __sizeof__, plus the GC header of tracked
// objects, as sys.getsizeof counts): for the objects whose size the codec cannot compute
// from public fields, such as a Decimal's coefficient or a grown dict's table.
std::size_t real_size(PyObject* o) {
    py::object n = py::reinterpret_steal<py::object>(PyObject_CallMethodNoArgs(o, g.sizeof_name));
    if (!n) throw_python();
    Py_ssize_t v = PyLong_AsSsize_t(n.ptr());
    if (v < 0) throw_python();
    return static_cast<std::size_t>(v) + (PyObject_IS_GC(o) ? 2 * sizeof(void*) : 0);
}

// The L1's byte bound charges each stored object its CPython size: exact where the size
// follows from public fields, from __sizeof__ where it does not (Decimal), fixed for the
// fixed-size types. Shared objects (interned strings, small ints, a ZoneInfo) are charged
// to every value that holds them: an over-count, never an under-count.
std::size_t leaf_charge(PyObject* o, Kind k) {
    switch (k) {
        case Kind::Str: {
            auto n = static_cast<std::size_t>(PyUnicode_GET_LENGTH(o));
            // A compact ASCII str is a 40-byte header and n + 1 bytes; any other carries a
            // 56-byte header, n + 1 code units and possibly a cached UTF-8 copy.
            if (PyUnicode_IS_COMPACT_ASCII(o)) return 41 + n;
            return 56 + (n + 1) * PyUnicode_KIND(o) + (n + 1) * 4;
        }
        case Kind::Bytes:
            return 33 + static_cast<std::size_t>(PyBytes_GET_SIZE(o));
        case Kind::Int:
            return 28 + 4 * static_cast<std::size_t>(Py_ABS(Py_SIZE(o)));
        case Kind::Float:
            return 24;
        case Kind::Decimal:
            return real_size(o);
        case Kind::Uuid:
            return 100;  // the object (56 bytes) and its 128-bit int
        case Kind::DateTime:
            return 48;
        case Kind::Time:
            return 40;
        case Kind::Date:
            return 32;
        case Kind::TimeDelta:
            return 40;
        default:
            return 16;  // None, True, False: singletons, charged a reference's worth
    }
}

class Snapshotter {
public:
    std::size_t charge = 0;

    // A private copy of `o` (new reference); `mutable_out` tells whether any part of it
    // is mutable (else the original object itself is returned and may be shared).
    PyObject* copy(PyObject* o, int depth, bool& mutable_out) {
        Kind k = classify(o);
        if (is_immutable_leaf(k)) {
            charge += leaf_charge(o, k);
            mutable_out = false;
            return Py_NewRef(o);
        }
        if (depth >= codec::kMaxDepth || k == Kind::Other) throw NeedsPickle{};
        switch (k) {
            case Kind::ByteArray:
                charge += 57 + static_cast<std::size_t>(PyByteArray_GET_SIZE(o));
                mutable_out = true;
                return checked(PyByteArray_FromObject(o));
            case Kind::List: {
                Py_ssize_t n = PyList_GET_SIZE(o);
                charge += 56 + 8 * static_cast<std::size_t>(n);  // GC header included
                py::object out = py::reinterpret_steal<py::object>(checked(PyList_New(n)));
                for (Py_ssize_t i = 0; i < n; ++i) {
                    if (PyList_GET_SIZE(o) != n) changed();
                    bool m;
                    PyList_SET_ITEM(out.ptr(), i, copy(PyList_GET_ITEM(o, i), depth + 1, m));
                }
                mutable_out = true;
                return out.release().ptr();
            }
            case Kind::Tuple: {
                Py_ssize_t n = PyTuple_GET_SIZE(o);
                charge += 40 + 8 * static_cast<std::size_t>(n);  // GC header included
                py::object out = py::reinterpret_steal<py::object>(checked(PyTuple_New(n)));
                bool any = false;
                for (Py_ssize_t i = 0; i < n; ++i) {
                    bool m;
                    PyTuple_SET_ITEM(out.ptr(), i, copy(PyTuple_GET_ITEM(o, i), depth + 1, m));
                    any |= m;
                }
                mutable_out = any;
                return any ? out.release().ptr() : Py_NewRef(o);
            }
            case Kind::Dict: {
                Py_ssize_t n = PyDict_GET_SIZE(o), pos = 0, seen = 0;
                py::object out = py::reinterpret_steal<py::object>(checked(PyDict_New()));
                PyObject *key, *value;
                while (PyDict_Next(o, &pos, &key, &value)) {
                    if (++seen > n) changed();
                    bool m;
                    py::object kc = py::reinterpret_steal<py::object>(copy(key, depth + 1, m));
                    py::object vc = py::reinterpret_steal<py::object>(copy(value, depth + 1, m));
                    if (PyDict_SetItem(out.ptr(), kc.ptr(), vc.ptr()) < 0) throw_python();
                }
                if (seen != n) changed();
                // A dict's table grows in steps: small ones have a known size, larger ones
                // are measured (a 1,000-key dict is ~36 KiB, not 1,000 x its entry size).
                charge += n == 0 ? 64 : n <= 5 ? 224 : real_size(out.ptr());
                mutable_out = true;
                return out.release().ptr();
            }
            case Kind::Set:
            case Kind::FrozenSet: {
                for_each(o, [&](PyObject* item) {
                    bool m;
                    Py_DECREF(copy(item, depth + 1, m));  // elements are hashable: immutable
                });
                mutable_out = k == Kind::Set;
                PyObject* out = k == Kind::Set ? checked(PySet_New(o)) : Py_NewRef(o);
                try {
                    charge += real_size(out);
                } catch (...) {
                    Py_DECREF(out);
                    throw;
                }
                return out;
            }
            default:
                throw NeedsPickle{};
        }
    }

private:
    static PyObject* checked(PyObject* o) {
        if (!o) throw_python();
        return o;
    }
    [[noreturn]] static void changed() {
        PyErr_SetString(PyExc_RuntimeError, "container changed size while being cached");
        throw_python();
    }
};

PyObject* deep_copy(PyObject* o);

// A new list or tuple with the items of `o`: immutable items shared, the others copied.
PyObject* copy_sequence(PyObject* o, bool is_tuple) {
    Py_ssize_t n = is_tuple ? PyTuple_GET_SIZE(o) : PyList_GET_SIZE(o);
    py::object out = py::reinterpret_steal<py::object>(is_tuple ? PyTuple_New(n) : PyList_New(n));
    if (!out) throw_python();
    for (Py_ssize_t i = 0; i < n; ++i) {
        PyObject* item = is_tuple ? PyTuple_GET_ITEM(o, i) : PyList_GET_ITEM(o, i);
        PyObject* c = is_immutable_leaf(classify(item)) ? Py_NewRef(item) : deep_copy(item);
        if (is_tuple) {
            PyTuple_SET_ITEM(out.ptr(), i, c);
        } else {
            PyList_SET_ITEM(out.ptr(), i, c);
        }
    }
    return out.release().ptr();
}

// A fresh structural copy of a stored snapshot: containers are new, immutable leaves
// (and tuples/frozensets made only of them) are shared.
PyObject* deep_copy(PyObject* o) {
    Kind k = classify(o);
    switch (k) {
        case Kind::List:
            return copy_sequence(o, false);
        case Kind::Dict: {
            // PyDict_Copy is a fast bulk copy; then only mutable values are replaced.
            PyObject* out = PyDict_Copy(o);
            if (!out) throw_python();
            Py_ssize_t pos = 0;
            PyObject *key, *value;
            try {
                while (PyDict_Next(o, &pos, &key, &value)) {
                    if (is_immutable_leaf(classify(value))) continue;
                    py::object c = py::reinterpret_steal<py::object>(deep_copy(value));
                    if (PyDict_SetItem(out, key, c.ptr()) < 0) throw_python();
                }
            } catch (...) {
                Py_DECREF(out);
                throw;
            }
            return out;
        }
        case Kind::Tuple:
            return copy_sequence(o, true);
        case Kind::Set: {
            PyObject* out = PySet_New(o);
            if (!out) throw_python();
            return out;
        }
        case Kind::ByteArray: {
            PyObject* out = PyByteArray_FromObject(o);
            if (!out) throw_python();
            return out;
        }
        default:
            return Py_NewRef(o);
    }
}

py::object import_attr(const char* module, const char* name) {
    return py::module_::import(module).attr(name);
}

}  // namespace

void init_values() {
    PyDateTime_IMPORT;
    if (!PyDateTimeAPI) throw_python();
    auto keep = [](py::object o) { return o.release().ptr(); };
    g.decimal = reinterpret_cast<PyTypeObject*>(keep(import_attr("decimal", "Decimal")));
    g.uuid = reinterpret_cast<PyTypeObject*>(keep(import_attr("uuid", "UUID")));
    g.timezone = reinterpret_cast<PyTypeObject*>(keep(import_attr("datetime", "timezone")));
    g.zoneinfo = reinterpret_cast<PyTypeObject*>(keep(import_attr("zoneinfo", "ZoneInfo")));
    g.pickle_dumps = keep(import_attr("pickle", "dumps"));
    g.pickle_loads = keep(import_attr("pickle", "loads"));
    g.zlib_compress = keep(import_attr("zlib", "compress"));
    g.zlib_decompressobj = keep(import_attr("zlib", "decompressobj"));
    g.hmac_digest = keep(import_attr("hmac", "digest"));
    g.compare_digest = keep(import_attr("hmac", "compare_digest"));
    g.sha256 = keep(py::str("sha256"));
    g.decode_error = keep(import_attr("django_fastcache.errors", "DecodeError"));
    g.signature_error = keep(import_attr("django_fastcache.errors", "SignatureError"));
    g.serialization_error = keep(import_attr("django_fastcache.errors", "SerializationError"));
    g.too_large_error = keep(import_attr("django_fastcache.errors", "ValueTooLargeError"));
    g.compress = keep(import_attr("django_fastcache._bodies", "compress"));
    g.decompress = keep(import_attr("django_fastcache._bodies", "decompress"));
    g.json_dumps = keep(import_attr("django_fastcache._bodies", "json_dumps"));
    g.json_loads = keep(import_attr("django_fastcache._bodies", "json_loads"));
    g.sizeof_name = keep(py::str("__sizeof__"));
    g.sixty_four = keep(py::int_(64));
    g.empty_tuple = keep(py::tuple());
    g.int_name = keep(py::str("int"));
    g.is_safe_name = keep(py::str("is_safe"));
    g.safe_uuid_unknown = keep(import_attr("uuid", "SafeUUID").attr("unknown"));
}

namespace {

py::object bytes_of(std::string_view s) {
    return py::reinterpret_steal<py::object>(
        PyBytes_FromStringAndSize(s.data(), static_cast<Py_ssize_t>(s.size())));
}

std::string_view view_of(PyObject* b) {
    return std::string_view(PyBytes_AS_STRING(b), static_cast<std::size_t>(PyBytes_GET_SIZE(b)));
}

[[noreturn]] void too_large(std::size_t size, const CodecOptions& o) {
    std::string message =
        "value of " + std::to_string(size) +
        " bytes (encoded, before compression) is over OPTIONS['MAX_VALUE_BYTES'] = " +
        std::to_string(o.max_value_bytes);
    PyErr_SetString(g.too_large_error, message.c_str());
    throw_python();
}

[[noreturn]] void too_many_objects(std::uint64_t objects, const CodecOptions& o) {
    std::string message = "value of " + std::to_string(objects) +
                          " objects (items of its containers included) is over "
                          "OPTIONS['MAX_VALUE_OBJECTS'] = " +
                          std::to_string(o.max_value_objects);
    PyErr_SetString(g.too_large_error, message.c_str());
    throw_python();
}

// JSON bytes of `value`, or None when JSON cannot hold it.
py::object json_body(py::handle value) {
    py::object out =
        py::reinterpret_steal<py::object>(PyObject_CallOneArg(g.json_dumps, value.ptr()));
    if (!out) throw_python();
    return out;
}

// Compressed `body`, or a null object when compression does not make it smaller.
py::object compress_body(std::string_view body, const CodecOptions& o) {
    py::object raw = bytes_of(body);
    if (!raw) throw_python();
    py::object out;
    if (o.compressor == codec::Compressor::Zlib) {
        out = py::reinterpret_steal<py::object>(
            PyObject_CallFunction(g.zlib_compress, "Oi", raw.ptr(), o.compress_level));
    } else {
        out = py::reinterpret_steal<py::object>(PyObject_CallFunction(
            g.compress, "iOi", static_cast<int>(o.compressor), raw.ptr(), o.compress_level));
    }
    if (!out) throw_python();
    if (static_cast<std::size_t>(PyBytes_GET_SIZE(out.ptr())) >= body.size()) return py::object();
    return out;
}

// The decompressed body, at most o.max_value_bytes long; DecodeError otherwise.
py::object decompress_body(std::string_view body, codec::Compressor c, const CodecOptions& o) {
    py::object in = bytes_of(body);
    if (!in) throw_python();
    auto limit = static_cast<Py_ssize_t>(o.max_value_bytes);
    if (c != codec::Compressor::Zlib) {
        py::object out = py::reinterpret_steal<py::object>(
            PyObject_CallFunction(g.decompress, "iOn", static_cast<int>(c), in.ptr(), limit));
        if (!out) throw_python();  // DecodeError from _bodies
        return out;
    }
    py::object d = py::reinterpret_steal<py::object>(PyObject_CallNoArgs(g.zlib_decompressobj));
    if (!d) throw_python();
    py::object out = py::reinterpret_steal<py::object>(
        PyObject_CallMethod(d.ptr(), "decompress", "On", in.ptr(), limit));
    if (!out) raise_chained(g.decode_error, "corrupt compressed value");
    py::object eof = py::reinterpret_steal<py::object>(PyObject_GetAttrString(d.ptr(), "eof"));
    if (!eof) throw_python();
    if (eof.ptr() != Py_True) {
        throw DecodeError(
            "compressed value truncated or larger than the size bound (MAX_VALUE_BYTES)");
    }
    py::object unused =
        py::reinterpret_steal<py::object>(PyObject_GetAttrString(d.ptr(), "unused_data"));
    if (!unused) throw_python();
    if (PyBytes_GET_SIZE(unused.ptr()) != 0) throw DecodeError("bytes after compressed value");
    return out;
}

// Whether `mac` (32 bytes) signs `signed_part` under `key`.
bool verifies(const std::string& key, std::string_view signed_part, std::string_view mac) {
    py::bytes expected = mac_of(key, signed_part);
    py::bytes got(mac.data(), mac.size());
    py::object same = py::reinterpret_steal<py::object>(
        PyObject_CallFunctionObjArgs(g.compare_digest, expected.ptr(), got.ptr(), nullptr));
    if (!same) throw_python();
    return same.ptr() == Py_True;
}

}  // namespace

py::bytes encode(py::handle value, const CodecOptions& o) {
    PyObject* v = value.ptr();
    bool pickle_only = o.serializer == Serializer::Pickle;
    if (!pickle_only && Py_TYPE(v) == &PyLong_Type) {
        // Plain ints are bare decimal digits, so Redis can INCRBY them.
        int overflow = 0;
        long long n = PyLong_AsLongLongAndOverflow(v, &overflow);
        if (!overflow) {
            char digits[24];
            auto r = std::to_chars(digits, digits + sizeof digits, n);
            return py::bytes(digits, r.ptr - digits);
        }
        py::object s = py::reinterpret_steal<py::object>(PyObject_Str(v));
        if (s) {
            Py_ssize_t len;
            const char* p = PyUnicode_AsUTF8AndSize(s.ptr(), &len);
            if (!p) throw_python();
            return py::bytes(p, len);
        }
        PyErr_Clear();  // too many digits for str(): pickled below
    }

    std::uint8_t flags = 0;
    auto format = codec::BodyFormat::Msgpack;
    py::object owned;  // keeps a Python-made body alive
    std::string_view body;
    std::uint64_t objects = 0;  // what a reader will count (pickles are not counted)
    if (o.serializer == Serializer::Msgpack) {
        std::string& out = tls_writer.buffer();
        tls_writer.reset();
        try {
            Encoder(tls_writer).value(v, 0);
            body = out;
            objects = tls_writer.objects();
        } catch (const NeedsPickle&) {
        }
    } else if (o.serializer == Serializer::Json) {
        owned = json_body(value);
        if (!owned.is_none()) {
            body = view_of(owned.ptr());
            format = codec::BodyFormat::Json;
            objects = codec::json_objects(body);
        }
    }
    // A value with more objects than a reader builds from msgpack or JSON (the bound on what
    // a foreign writer can make a reader do) goes as a pickle, which only a holder of the key
    // can write when signed: what `set` accepts, `get` reads back.
    if (body.data() != nullptr && objects > o.max_value_objects && o.pickle != PickleMode::Forbid) {
        body = std::string_view{};
        objects = 0;
    }
    if (body.data() == nullptr) {
        if (o.pickle == PickleMode::Forbid) forbid(value);
        owned = pickle_dumps(value, o.pickle_protocol);
        flags |= codec::kPickled;
        format = codec::BodyFormat::Msgpack;  // not used for a pickle: no second byte for it
        body = view_of(owned.ptr());
    }
    if (body.size() > o.max_value_bytes) too_large(body.size(), o);
    if (objects > o.max_value_objects) too_many_objects(objects, o);

    py::object compressed;
    if (o.compress_min_bytes >= 0 && static_cast<long long>(body.size()) >= o.compress_min_bytes) {
        compressed = compress_body(body, o);
        if (compressed) {
            body = view_of(compressed.ptr());
            flags |= codec::kCompressed;
        }
    }
    bool extended = ((flags & codec::kCompressed) && o.compressor != codec::Compressor::Zlib) ||
                    format != codec::BodyFormat::Msgpack;
    if (extended) flags |= codec::kExtended;

    bool sign = (flags & codec::kPickled) && o.pickle == PickleMode::Signed;
    if (sign) flags |= codec::kSigned;
    std::string result;
    result.reserve(2 + (sign ? 32 : 0) + body.size());
    result.push_back(static_cast<char>(codec::make_header(flags)));
    if (extended) {
        auto c = (flags & codec::kCompressed) ? o.compressor : codec::Compressor::Zlib;
        result.push_back(static_cast<char>(codec::make_extension(c, format)));
    }
    if (sign) {
        // The MAC covers the header bytes too, so no flag or compressor can be swapped.
        std::string signed_part = result;
        signed_part.append(body);
        py::bytes mac = mac_of(o.signing_key, signed_part);
        result.append(PyBytes_AS_STRING(mac.ptr()), PyBytes_GET_SIZE(mac.ptr()));
    }
    result.append(body);
    return py::bytes(result);
}

py::object decode(std::string_view data, const CodecOptions& o) {
    codec::Header header{};
    if (codec::framing(data, &header) == codec::Framing::Integer) {
        std::string z(data);
        PyObject* n = PyLong_FromString(z.c_str(), nullptr, 10);
        if (!n) raise_chained(g.decode_error, "invalid integer value");
        return py::reinterpret_steal<py::object>(n);
    }
    std::string_view rest = data.substr(header.size);
    bool pickled = header.flags & codec::kPickled;
    if (header.flags & codec::kSigned) {
        if (rest.size() < 32) throw DecodeError("signed value shorter than its signature");
        if (o.signing_key.empty()) throw SignatureError("signed value but no signing key");
        std::string signed_part(data.substr(0, header.size));
        signed_part.append(rest.substr(32));
        std::string_view mac = rest.substr(0, 32);
        // The current key first; then each fallback (SECRET_KEY_FALLBACKS), so values
        // signed before a key rotation stay readable until they expire.
        bool ok = verifies(o.signing_key, signed_part, mac);
        for (std::size_t i = 0; !ok && i < o.fallback_keys.size(); ++i) {
            ok = verifies(o.fallback_keys[i], signed_part, mac);
        }
        if (!ok) throw SignatureError("signature of a pickled value does not verify");
        rest.remove_prefix(32);
    } else if (pickled && o.pickle == PickleMode::Signed) {
        throw SignatureError("unsigned pickled value refused (PICKLE is 'signed')");
    }
    if (pickled && o.pickle == PickleMode::Forbid) {
        throw SignatureError("pickled value refused (PICKLE is 'forbid')");
    }
    if (!pickled && (header.flags & codec::kSigned)) throw DecodeError("signed msgpack value");

    py::object inflated;
    if (header.flags & codec::kCompressed) {
        inflated = decompress_body(rest, header.compressor, o);
        rest = view_of(inflated.ptr());
    }
    // Checked after decompression too: a body over the bound costs more to decode than the
    // site said a value may cost, whoever wrote it.
    if (rest.size() > o.max_value_bytes) {
        throw DecodeError("value body of " + std::to_string(rest.size()) +
                          " bytes is over the size bound (MAX_VALUE_BYTES)");
    }

    if (pickled) {
        py::object in = inflated ? inflated : bytes_of(rest);
        if (!in) throw_python();
        PyObject* v = PyObject_CallOneArg(g.pickle_loads, in.ptr());
        if (!v) raise_chained(g.decode_error, "pickled value could not be loaded");
        return py::reinterpret_steal<py::object>(v);
    }
    if (header.format == codec::BodyFormat::Json) {
        std::uint64_t objects = codec::json_objects(rest);
        if (objects > o.max_value_objects) {
            throw DecodeError("value holds more than " + std::to_string(o.max_value_objects) +
                              " objects (MAX_VALUE_OBJECTS)");
        }
        py::object in = inflated ? inflated : bytes_of(rest);
        if (!in) throw_python();
        PyObject* v;
        {
            GcPause pause;  // as for msgpack: in a large heap a collection costs ~100 ms
            v = PyObject_CallOneArg(g.json_loads, in.ptr());
        }
        if (!v) throw_python();  // DecodeError from _bodies
        return py::reinterpret_steal<py::object>(v);
    }
    return decode_body(rest, o.max_value_objects);
}

Snapshot snapshot(py::handle value, const CodecOptions& o) {
    py::object source = py::reinterpret_borrow<py::object>(value);
    if (o.serializer == Serializer::Json && Py_TYPE(value.ptr()) != &PyLong_Type) {
        // The L1 holds what Redis would give back, so every tier and process agrees.
        py::object body = json_body(value);
        if (!body.is_none()) {
            source =
                py::reinterpret_steal<py::object>(PyObject_CallOneArg(g.json_loads, body.ptr()));
            if (!source) throw_python();
        }
    }
    Snapshotter s;
    bool json_fallback = o.serializer == Serializer::Json && source.is(value) &&
                         Py_TYPE(value.ptr()) != &PyLong_Type;
    if (!json_fallback) {
        try {
            bool is_mutable = false;
            py::object copy =
                py::reinterpret_steal<py::object>(s.copy(source.ptr(), 0, is_mutable));
            return {std::move(copy), is_mutable ? kCopy : kShared, s.charge};
        } catch (const NeedsPickle&) {
        }
    }
    if (o.pickle == PickleMode::Forbid) forbid(value);
    py::bytes pickled = pickle_dumps(value, o.pickle_protocol);
    std::size_t charge = 33 + static_cast<std::size_t>(PyBytes_GET_SIZE(pickled.ptr()));
    return {std::move(pickled), kPickled, charge};
}

py::object materialize(py::handle stored, std::uint32_t tag) {
    if (tag == kShared) return py::reinterpret_borrow<py::object>(stored);
    if (tag == kCopy) return py::reinterpret_steal<py::object>(deep_copy(stored.ptr()));
    PyObject* v = PyObject_CallOneArg(g.pickle_loads, stored.ptr());
    if (!v) throw_python();
    return py::reinterpret_steal<py::object>(v);
}

std::size_t charge_of_int(py::handle value) { return leaf_charge(value.ptr(), Kind::Int); }

}  // namespace fastcache::bindings
