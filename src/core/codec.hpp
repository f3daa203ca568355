// The wire format of a cached value: a header byte, then a msgpack body whose extension
// types carry the Python types JSON-like formats lose (tuple, set, datetime, Decimal, ...).
//
// Layout of a stored value:
//   - a plain integer: its decimal digits, no header ("-12"), so Redis can INCRBY it;
//   - anything else: one header byte, then the body.
// Header byte: 1vvvffff. The top bit is set, so a header never looks like a digit or '-'.
// vvv is the format version (kFormatVersion); ffff are flags (Flags below). With kExtended
// set, a second header byte follows: its low nibble names the compressor (Compressor), its
// high nibble the body format (BodyFormat). Values using the defaults (zlib, msgpack) have
// no second byte, so every value written before the byte existed still reads the same.
// The bindings own the body transforms that need Python (pickle, HMAC, compressors, JSON);
// this file owns the msgpack structure and the exact binary layout of every extension type.
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <limits>
#include <msgpack.hpp>
#include <string>
#include <string_view>
#include <unordered_set>
#include <vector>

#include "core/errors.hpp"

namespace fastcache::codec {

inline constexpr std::uint8_t kFormatVersion = 1;

enum Flags : std::uint8_t {
    kCompressed = 0x1,  // body is compressed (applied after pickling/packing)
    kPickled = 0x2,     // body is a pickle, not msgpack
    kSigned = 0x4,      // a 32-byte HMAC-SHA256 precedes the (possibly compressed) body
    kExtended = 0x8,    // a second header byte follows (compressor, body format)
    kKnownFlags = 0xf,
};

// Which compressor a compressed body went through (second header byte, low nibble).
enum class Compressor : std::uint8_t { Zlib = 0, Zstd = 1, Lz4 = 2 };

// What an unpickled body is (second header byte, high nibble).
enum class BodyFormat : std::uint8_t { Msgpack = 0, Json = 1 };

inline std::uint8_t make_header(std::uint8_t flags) {
    return static_cast<std::uint8_t>(0x80 | (kFormatVersion << 4) | flags);
}

inline std::uint8_t make_extension(Compressor c, BodyFormat f) {
    return static_cast<std::uint8_t>((static_cast<unsigned>(f) << 4) | static_cast<unsigned>(c));
}

struct Header {
    std::uint8_t flags = 0;
    Compressor compressor = Compressor::Zlib;
    BodyFormat format = BodyFormat::Msgpack;
    std::size_t size = 1;  // header bytes: 1, or 2 with kExtended
};

// What the first byte of a stored value says.
enum class Framing { Integer, Headed };

// Classifies `data` and, for a headed value, checks its version and flags.
// Throws DecodeError (empty/foreign) or UnknownFormatError (another version or flags).
Framing framing(std::string_view data, Header* header);

// Validates the digits of a plain integer value: -?[0-9]+, at most 4300 digits (CPython's
// default int/str conversion limit). Throws DecodeError.
void check_integer_digits(std::string_view digits);

// Zero-length extension values that, as the first item of an array, say what the array
// stands for: [TUPLE, 1, 2] is (1, 2); [BYTEARRAY, bin] is a bytearray.
enum class Tag : std::int8_t {
    None = 0,
    Tuple = 1,
    Set = 2,
    FrozenSet = 3,
    ByteArray = 4,
};

// Extension types that carry a whole leaf value.
enum class Ext : std::int8_t {
    BigInt = 10,     // ASCII -?[0-9]+ (integers outside 64 bits)
    Decimal = 11,    // ASCII str(Decimal)
    Uuid = 12,       // 16 bytes, big-endian
    DateTime = 13,   // Date + TimeOfDay + TzInfo
    Date = 14,       // Date
    Time = 15,       // TimeOfDay + TzInfo
    TimeDelta = 16,  // days, seconds, microseconds: 3 x int32 big-endian
};

struct Date {
    int year = 1, month = 1, day = 1;
};

struct TimeOfDay {
    int hour = 0, minute = 0, second = 0, microsecond = 0, fold = 0;
};

// A datetime's or time's tzinfo, limited to the kinds that round-trip exactly:
// none, a fixed offset (datetime.timezone, with its name if not the default one),
// or an IANA zone (zoneinfo.ZoneInfo, by key).
struct TzInfo {
    enum Kind : std::uint8_t { None = 0, Fixed = 1, Zone = 2 } kind = None;
    std::int64_t offset_us = 0;  // Fixed only
    std::string_view name;       // Fixed: custom name or empty; Zone: the key
};

struct TimeDelta {
    std::int32_t days = 0, seconds = 0, microseconds = 0;
};

// The longest Decimal text read back; longer ones are pickled when written.
inline constexpr std::size_t kMaxDecimalText = 4096;

// Maximum nesting of containers, in both directions: deeper values are pickled when
// written and refused when read, so no reader recurses without bound.
inline constexpr int kMaxDepth = 512;

// The object budget of a body (MAX_VALUE_OBJECTS): how many objects a reader builds for
// it. Every value counts one, None, booleans and small ints included: each still costs the
// reader a container slot and time, and counting every item lets the reader add up a
// body's objects from its container headers alone (the root value, plus the items each
// container claims) and refuse an oversized body before building anything. A tag counts as
// the item it is; a few extension types count the extra objects they are made of or cost
// (ObjectCount). The Writer counts the same way, so what is written can be read back.
inline constexpr std::uint64_t kUnboundedObjects = std::numeric_limits<std::uint64_t>::max();

// Counts a body's objects as kUnboundedObjects says; the Writer and the reader share it,
// so both count alike. Extra objects, beside one per value:
//   - a UUID: its 128-bit int;
//   - a time or datetime whose fixed offset differs from the previous one's in the body:
//     2 (3 with a name), a timezone holding a timedelta; the reader shares it with the
//     following ones of the same offset (so a body of UTC datetimes counts one each);
//   - the first time or datetime of each IANA zone in a body: kZoneObjects, for the
//     transition tables ZoneInfo loads from its file (about 40 us, 400 small objects' worth;
//     later ones share the loaded zone);
//   - an integer of d digits beyond 64 bits: d * d / 16384, for CPython's quadratic
//     decimal-to-int conversion (62 us for 4,300 digits, what 600 small objects cost;
//     counted twice over, since it is the costliest per byte and varies most with load).
// Not thread-safe.
class ObjectCount {
public:
    static constexpr std::uint64_t kZoneObjects = 400;

    std::uint64_t total() const { return total_; }
    void reset() {
        total_ = 1;  // the root value
        zones_.clear();
        last_zone_.clear();
        has_fixed_ = false;
    }
    void items(std::uint64_t n) { total_ += n; }
    void uuid() { total_ += 1; }
    void bigint(std::size_t text_size) { total_ += std::uint64_t(text_size) * text_size / 16384; }
    void tz(const TzInfo& tz) {
        if (tz.kind == TzInfo::Fixed) {
            if (has_fixed_ && tz.offset_us == fixed_offset_ && tz.name == fixed_name_) return;
            has_fixed_ = true;
            fixed_offset_ = tz.offset_us;
            fixed_name_.assign(tz.name);
            total_ += tz.name.empty() ? 2 : 3;
            return;
        }
        if (tz.kind != TzInfo::Zone || tz.name == last_zone_) return;
        last_zone_.assign(tz.name);
        if (zones_.insert(last_zone_).second) total_ += kZoneObjects;
    }

private:
    std::uint64_t total_ = 1;
    // Distinct zone keys seen: at most the budget / kZoneObjects before a body is refused
    // (and the zones that exist: the reader refuses a body at its first unknown key).
    std::unordered_set<std::string> zones_;
    std::string last_zone_;   // most values use one zone: no lookup for it
    bool has_fixed_ = false;  // the previous fixed offset and its name
    std::int64_t fixed_offset_ = 0;
    std::string fixed_name_;
};

// The values (keys included) of a JSON text, counted as the msgpack reader counts them:
// what a JSON parser builds for it. Exact for valid JSON; for invalid JSON some count that
// the parser will refuse anyway. One pass, no allocation.
std::uint64_t json_objects(std::string_view text);

// Builds a msgpack body. Not thread-safe; reuse one per thread to keep its buffer.
class Writer {
public:
    Writer() : packer_(buffer_) {}
    Writer(const Writer&) = delete;
    Writer& operator=(const Writer&) = delete;

    void reset() {
        buffer_.data.clear();
        objects_.reset();
    }
    std::string_view view() const { return buffer_.data; }
    std::string& buffer() { return buffer_.data; }
    // The objects a reader counts for what was written since reset() (see
    // kUnboundedObjects): exactly what read_body checks against its budget.
    std::uint64_t objects() const { return objects_.total(); }

    void nil() { packer_.pack_nil(); }
    void boolean(bool v) { v ? packer_.pack_true() : packer_.pack_false(); }
    void int64(std::int64_t v) { packer_.pack_int64(v); }
    void uint64(std::uint64_t v) { packer_.pack_uint64(v); }
    void float64(double v) { packer_.pack_double(v); }
    void str(std::string_view s);
    void bin(std::string_view s, Tag tag = Tag::None);
    void begin_array(std::uint32_t n, Tag tag = Tag::None);
    void begin_map(std::uint32_t n) {
        objects_.items(2 * static_cast<std::uint64_t>(n));
        packer_.pack_map(n);
    }
    void bigint(std::string_view digits) {
        objects_.bigint(digits.size());
        ext(Ext::BigInt, digits);
    }
    void decimal(std::string_view text) { ext(Ext::Decimal, text); }
    void uuid(const std::uint8_t (&bytes)[16]);
    void date(const Date& d);
    void time(const TimeOfDay& t, const TzInfo& tz);
    void datetime(const Date& d, const TimeOfDay& t, const TzInfo& tz);
    void timedelta(const TimeDelta& td);

private:
    struct Buffer {
        std::string data;
        void write(const char* p, std::size_t n) { data.append(p, n); }
    };
    void tag(Tag t);
    void ext(Ext type, std::string_view payload);

    Buffer buffer_;
    msgpack::packer<Buffer> packer_;
    std::string scratch_;
    ObjectCount objects_;
};

namespace detail {

// Parses the fixed binary layouts of the extension payloads; throws DecodeError.
Date read_date(const unsigned char* p);
TimeOfDay read_time(const unsigned char* p);
TzInfo read_tz(std::string_view rest);
TimeDelta read_timedelta(std::string_view payload);

// Adapts msgpack-c's parse events to a Sink's, resolving tags and extension types, and
// enforcing the limits that keep a hostile input cheap: depth, container sizes no larger
// than the input, the object budget, exact extension payload sizes.
//
// A tagged value is an array whose first item is a zero-length extension naming the tag
// (a tuple (1, 2) is [TUPLE, 1, 2]; a bytearray is [BYTEARRAY, bin]). An array's tag is
// only known at its first item, so the sink hears of an array when its first item (or its
// end) arrives.
template <class Sink>
class Visitor : public msgpack::null_visitor {
public:
    Visitor(Sink& sink, std::size_t input_size, std::uint64_t max_objects)
        : sink_(sink), input_size_(input_size), max_objects_(max_objects) {}

    bool visit_nil() { return value(), sink_.nil(), true; }
    bool visit_boolean(bool v) { return value(), sink_.boolean(v), true; }
    bool visit_positive_integer(std::uint64_t v) { return value(), sink_.uint64(v), true; }
    bool visit_negative_integer(std::int64_t v) { return value(), sink_.int64(v), true; }
    bool visit_float32(float v) { return value(), sink_.float64(v), true; }
    bool visit_float64(double v) { return value(), sink_.float64(v), true; }
    bool visit_str(const char* p, std::uint32_t n) {
        return value(), sink_.str(std::string_view(p, n)), true;
    }
    bool visit_bin(const char* p, std::uint32_t n) {
        bool bytearray = !stack_.empty() && stack_.back().tag == Tag::ByteArray;
        value(true);
        sink_.bin(std::string_view(p, n), bytearray);
        return true;
    }
    bool visit_ext(const char* p, std::uint32_t n);
    bool start_array(std::uint32_t n) {
        value();
        open(n);
        stack_.push_back(Frame{n, 0, Tag::None, true});
        return true;
    }
    bool end_array() {
        Frame f = stack_.back();
        stack_.pop_back();
        --depth_;
        if (f.pending) sink_.begin_array(0, Tag::None);  // an empty untagged array
        if (f.tag == Tag::ByteArray) {
            if (f.seen != 2) throw DecodeError("bytearray tag without its bytes");
            return true;
        }
        sink_.end_array();
        return true;
    }
    bool start_map(std::uint32_t n) {
        value();
        open(2 * static_cast<std::uint64_t>(n));
        stack_.push_back(Frame{n, 0, Tag::None, false});
        sink_.begin_map(n);
        return true;
    }
    bool end_map() {
        stack_.pop_back();
        --depth_;
        sink_.end_map();
        return true;
    }
    void parse_error(std::size_t, std::size_t) { throw DecodeError("malformed msgpack body"); }
    void insufficient_bytes(std::size_t, std::size_t) {
        throw DecodeError("truncated msgpack body");
    }

private:
    struct Frame {
        std::uint32_t size;
        std::uint32_t seen;  // values begun inside (a map counts keys and values)
        Tag tag;
        bool pending;  // an array not yet announced to the sink
    };

    // Called as each value (other than a tag) begins: announces a pending array.
    void value(bool is_bin = false) {
        if (stack_.empty()) return;
        Frame& f = stack_.back();
        if (f.pending) {
            f.pending = false;
            sink_.begin_array(f.size, Tag::None);
        }
        if (f.tag == Tag::ByteArray && (!is_bin || f.seen != 1)) {
            throw DecodeError("bytearray tag not followed by exactly one bin");
        }
        ++f.seen;
    }
    // Every value in a msgpack body begins at a byte of its own, so all the items that
    // all the containers claim, together, are fewer than the body's bytes (the root value
    // has a byte no container claims). Checking
    // the running total (not each header alone) keeps nested headers from claiming the
    // same bytes again: a chain of arrays each claiming "the rest of the input" would
    // otherwise make the sink presize depth x input slots.
    void open(std::uint64_t items) {
        if (++depth_ > kMaxDepth) throw DecodeError("nesting deeper than 512 levels");
        claimed_ += items;
        if (claimed_ >= input_size_) {
            throw DecodeError("containers claim more items than the input holds");
        }
        objects_.items(items);
        check_budget();
    }
    // The body's objects are the root, every item a container claims and the extra objects
    // of the extension values seen so far: refused as soon as that is over the budget, so a
    // flat array of a million empty lists is refused at its header.
    void check_budget() {
        if (objects_.total() > max_objects_) {
            throw DecodeError("value holds more than " + std::to_string(max_objects_) +
                              " objects (MAX_VALUE_OBJECTS)");
        }
    }

    Sink& sink_;
    std::size_t input_size_;
    std::uint64_t max_objects_;
    std::uint64_t claimed_ = 0;
    ObjectCount objects_;
    int depth_ = 0;
    std::vector<Frame> stack_;
};

template <class Sink>
bool Visitor<Sink>::visit_ext(const char* p, std::uint32_t n) {
    if (n < 1) throw DecodeError("empty extension");
    auto type = static_cast<std::int8_t>(p[0]);
    std::string_view payload(p + 1, n - 1);
    const auto* u = reinterpret_cast<const unsigned char*>(payload.data());
    if (type >= 1 && type <= 4) {
        if (!payload.empty()) throw DecodeError("tag with a payload");
        if (stack_.empty() || !stack_.back().pending)
            throw DecodeError("tag outside an array head");
        Frame& f = stack_.back();
        f.pending = false;
        f.tag = static_cast<Tag>(type);
        f.seen = 1;
        if (f.tag == Tag::ByteArray) {
            if (f.size != 2) throw DecodeError("bytearray array is not [tag, bin]");
        } else {
            sink_.begin_array(f.size - 1, f.tag);
        }
        return true;
    }
    value();
    switch (static_cast<Ext>(type)) {
        case Ext::BigInt:
            check_integer_digits(payload);
            objects_.bigint(payload.size());
            check_budget();
            sink_.bigint(payload);
            return true;
        case Ext::Decimal:
            if (payload.empty() || payload.size() > kMaxDecimalText)
                throw DecodeError("bad Decimal");
            sink_.decimal(payload);
            return true;
        case Ext::Uuid:
            if (payload.size() != 16) throw DecodeError("UUID payload is not 16 bytes");
            objects_.uuid();
            check_budget();
            sink_.uuid(u);
            return true;
        case Ext::Date:
            if (payload.size() != 4) throw DecodeError("date payload is not 4 bytes");
            sink_.date(read_date(u));
            return true;
        case Ext::Time: {
            if (payload.size() < 9) throw DecodeError("time payload too short");
            TzInfo tz = read_tz(payload.substr(8));
            objects_.tz(tz);
            check_budget();
            sink_.time(read_time(u), tz);
            return true;
        }
        case Ext::DateTime: {
            if (payload.size() < 13) throw DecodeError("datetime payload too short");
            TzInfo tz = read_tz(payload.substr(12));
            objects_.tz(tz);
            check_budget();
            sink_.datetime(read_date(u), read_time(u + 4), tz);
            return true;
        }
        case Ext::TimeDelta:
            sink_.timedelta(read_timedelta(payload));
            return true;
    }
    throw DecodeError("unknown extension type " + std::to_string(type));
}

}  // namespace detail

// Reads a whole msgpack body into `sink`, which receives: nil, boolean, int64, uint64,
// float64, str, bin(bytes, is_bytearray), begin_array(n, Tag), end_array, begin_map(n)
// (then key, value, key, value...), end_map, bigint, decimal, uuid, date, time, datetime,
// timedelta. Throws DecodeError on anything malformed, truncated, with trailing bytes, or
// holding more than `max_objects` objects (counted as kUnboundedObjects says, and refused
// before the sink hears of the container that goes over); never reads outside
// [data, data + size).
template <class Sink>
void read_body(std::string_view body, Sink& sink, std::uint64_t max_objects = kUnboundedObjects) {
    detail::Visitor<Sink> visitor(sink, body.size(), max_objects);
    std::size_t off = 0;
    bool ok;
    try {
        ok = msgpack::v2::parse(body.data(), body.size(), off, visitor);
    } catch (const DecodeError&) {
        throw;
    } catch (const std::bad_alloc&) {
        throw;
    } catch (const std::exception& e) {
        throw DecodeError(std::string("malformed msgpack body: ") + e.what());
    }
    if (!ok) throw DecodeError("malformed msgpack body");
    if (off != body.size()) throw DecodeError("trailing bytes after the value");
}

}  // namespace fastcache::codec
