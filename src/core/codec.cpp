// Header framing, extension payload layouts and the msgpack writer of the wire format.
#include "core/codec.hpp"

namespace fastcache::codec {

namespace {

void put_be(std::string& out, std::uint64_t v, int bytes) {
    for (int i = bytes - 1; i >= 0; --i) out.push_back(static_cast<char>((v >> (8 * i)) & 0xff));
}

std::uint64_t get_be(const unsigned char* p, int bytes) {
    std::uint64_t v = 0;
    for (int i = 0; i < bytes; ++i) v = (v << 8) | p[i];
    return v;
}

void put_date(std::string& out, const Date& d) {
    put_be(out, static_cast<std::uint16_t>(d.year), 2);
    out.push_back(static_cast<char>(d.month));
    out.push_back(static_cast<char>(d.day));
}

void put_time(std::string& out, const TimeOfDay& t) {
    out.push_back(static_cast<char>(t.hour));
    out.push_back(static_cast<char>(t.minute));
    out.push_back(static_cast<char>(t.second));
    put_be(out, static_cast<std::uint32_t>(t.microsecond), 4);
    out.push_back(static_cast<char>(t.fold));
}

void put_tz(std::string& out, const TzInfo& tz) {
    out.push_back(static_cast<char>(tz.kind));
    if (tz.kind == TzInfo::Fixed) put_be(out, static_cast<std::uint64_t>(tz.offset_us), 8);
    if (tz.kind != TzInfo::None) out.append(tz.name);
}

}  // namespace

Framing framing(std::string_view data, Header* header) {
    if (data.empty()) throw DecodeError("empty value");
    auto first = static_cast<unsigned char>(data[0]);
    if (first == '-' || (first >= '0' && first <= '9')) {
        check_integer_digits(data);
        return Framing::Integer;
    }
    if (!(first & 0x80)) throw DecodeError("not a django-fastcache value (no header byte)");
    unsigned version = (first >> 4) & 0x7;
    unsigned flags = first & 0xf;
    if (version != kFormatVersion) {
        throw UnknownFormatError("value written in format version " + std::to_string(version) +
                                 "; this build reads version " + std::to_string(kFormatVersion));
    }
    header->flags = static_cast<std::uint8_t>(flags);
    header->compressor = Compressor::Zlib;
    header->format = BodyFormat::Msgpack;
    header->size = 1;
    if (flags & kExtended) {
        if (data.size() < 2) throw DecodeError("extended header without its second byte");
        auto second = static_cast<unsigned char>(data[1]);
        unsigned compressor = second & 0xf, format = second >> 4;
        if (compressor > static_cast<unsigned>(Compressor::Lz4)) {
            throw UnknownFormatError("value compressed with unknown compressor " +
                                     std::to_string(compressor));
        }
        if (format > static_cast<unsigned>(BodyFormat::Json)) {
            throw UnknownFormatError("value with unknown body format " + std::to_string(format));
        }
        header->compressor = static_cast<Compressor>(compressor);
        header->format = static_cast<BodyFormat>(format);
        header->size = 2;
    }
    return Framing::Headed;
}

void check_integer_digits(std::string_view s) {
    std::size_t i = (!s.empty() && s[0] == '-') ? 1 : 0;
    if (i == s.size()) throw DecodeError("integer value without digits");
    if (s.size() - i > 4300) throw DecodeError("integer value longer than 4300 digits");
    for (; i < s.size(); ++i) {
        if (s[i] < '0' || s[i] > '9') throw DecodeError("integer value with a non-digit");
    }
}

std::uint64_t json_objects(std::string_view text) {
    // A value begins at '[', '{', a string's opening quote, or the first character of a
    // number or literal (a token ends at a structural character or white space).
    std::uint64_t n = 0;
    bool in_string = false, escaped = false, in_token = false;
    for (char c : text) {
        if (in_string) {
            if (escaped) {
                escaped = false;
            } else if (c == '\\') {
                escaped = true;
            } else if (c == '"') {
                in_string = false;
            }
            continue;
        }
        switch (c) {
            case '"':
                in_string = true;
                ++n;
                in_token = false;
                break;
            case '[':
            case '{':
                ++n;
                in_token = false;
                break;
            case ']':
            case '}':
            case ',':
            case ':':
            case ' ':
            case '\t':
            case '\n':
            case '\r':
                in_token = false;
                break;
            default:
                if (!in_token) ++n;
                in_token = true;
        }
    }
    return n;
}

void Writer::str(std::string_view s) {
    packer_.pack_str(static_cast<std::uint32_t>(s.size()));
    packer_.pack_str_body(s.data(), static_cast<std::uint32_t>(s.size()));
}

void Writer::bin(std::string_view s, Tag t) {
    if (t != Tag::None) {
        objects_.items(2);
        packer_.pack_array(2);
        tag(t);
    }
    packer_.pack_bin(static_cast<std::uint32_t>(s.size()));
    packer_.pack_bin_body(s.data(), static_cast<std::uint32_t>(s.size()));
}

void Writer::begin_array(std::uint32_t n, Tag t) {
    objects_.items(std::uint64_t(n) + (t == Tag::None ? 0 : 1));
    if (t == Tag::None) {
        packer_.pack_array(n);
        return;
    }
    packer_.pack_array(n + 1);  // the tag is the first item
    tag(t);
}

void Writer::tag(Tag t) {
    if (t != Tag::None) packer_.pack_ext(0, static_cast<std::int8_t>(t));
}

void Writer::ext(Ext type, std::string_view payload) {
    packer_.pack_ext(payload.size(), static_cast<std::int8_t>(type));
    packer_.pack_ext_body(payload.data(), static_cast<std::uint32_t>(payload.size()));
}

void Writer::uuid(const std::uint8_t (&bytes)[16]) {
    objects_.uuid();
    ext(Ext::Uuid, std::string_view(reinterpret_cast<const char*>(bytes), 16));
}

void Writer::date(const Date& d) {
    scratch_.clear();
    put_date(scratch_, d);
    ext(Ext::Date, scratch_);
}

void Writer::time(const TimeOfDay& t, const TzInfo& tz) {
    objects_.tz(tz);
    scratch_.clear();
    put_time(scratch_, t);
    put_tz(scratch_, tz);
    ext(Ext::Time, scratch_);
}

void Writer::datetime(const Date& d, const TimeOfDay& t, const TzInfo& tz) {
    objects_.tz(tz);
    scratch_.clear();
    put_date(scratch_, d);
    put_time(scratch_, t);
    put_tz(scratch_, tz);
    ext(Ext::DateTime, scratch_);
}

void Writer::timedelta(const TimeDelta& td) {
    scratch_.clear();
    put_be(scratch_, static_cast<std::uint32_t>(td.days), 4);
    put_be(scratch_, static_cast<std::uint32_t>(td.seconds), 4);
    put_be(scratch_, static_cast<std::uint32_t>(td.microseconds), 4);
    ext(Ext::TimeDelta, scratch_);
}

namespace detail {

Date read_date(const unsigned char* p) { return Date{static_cast<int>(get_be(p, 2)), p[2], p[3]}; }

TimeOfDay read_time(const unsigned char* p) {
    return TimeOfDay{p[0], p[1], p[2], static_cast<int>(get_be(p + 3, 4)), p[7]};
}

TzInfo read_tz(std::string_view rest) {
    if (rest.empty()) throw DecodeError("missing tzinfo kind");
    TzInfo tz;
    auto kind = static_cast<unsigned char>(rest[0]);
    rest.remove_prefix(1);
    switch (kind) {
        case TzInfo::None:
            if (!rest.empty()) throw DecodeError("naive time with trailing bytes");
            return tz;
        case TzInfo::Fixed:
            if (rest.size() < 8) throw DecodeError("fixed offset too short");
            tz.kind = TzInfo::Fixed;
            tz.offset_us = static_cast<std::int64_t>(
                get_be(reinterpret_cast<const unsigned char*>(rest.data()), 8));
            tz.name = rest.substr(8);
            return tz;
        case TzInfo::Zone:
            if (rest.empty() || rest.size() > 255) throw DecodeError("bad time zone key");
            tz.kind = TzInfo::Zone;
            tz.name = rest;
            return tz;
        default:
            throw DecodeError("unknown tzinfo kind");
    }
}

TimeDelta read_timedelta(std::string_view payload) {
    if (payload.size() != 12) throw DecodeError("timedelta payload is not 12 bytes");
    const auto* p = reinterpret_cast<const unsigned char*>(payload.data());
    return TimeDelta{static_cast<std::int32_t>(static_cast<std::uint32_t>(get_be(p, 4))),
                     static_cast<std::int32_t>(static_cast<std::uint32_t>(get_be(p + 4, 4))),
                     static_cast<std::int32_t>(static_cast<std::uint32_t>(get_be(p + 8, 4)))};
}

}  // namespace detail

}  // namespace fastcache::codec
