// The JSON writer: json.dumps-compatible escaping, separators, indentation and float repr.
#include "core/json_writer.hpp"

#include <cassert>
#include <charconv>
#include <cmath>
#include <cstring>

namespace fastcache::json {

namespace {

constexpr char kHex[] = "0123456789abcdef";

// What json.dumps does with each byte-sized code point: 0 = copy, 1 = escape as \uXXXX,
// or the letter of a two-char escape. Built once for each ensure_ascii mode.
struct EscapeTable {
    char action[256];
    explicit EscapeTable(bool ensure_ascii) {
        for (int c = 0; c < 256; ++c) {
            if (c < 0x20) {
                action[c] = 1;
            } else if (ensure_ascii && c >= 0x7f) {
                action[c] = 1;
            } else {
                action[c] = 0;
            }
        }
        // NEL is a line break to some readers (and U+2028/U+2029 below): escaped in both
        // modes so a record always stays on one line.
        action[0x85] = 1;
        action[static_cast<unsigned char>('"')] = '"';
        action[static_cast<unsigned char>('\\')] = '\\';
        action[static_cast<unsigned char>('\n')] = 'n';
        action[static_cast<unsigned char>('\r')] = 'r';
        action[static_cast<unsigned char>('\t')] = 't';
        action[static_cast<unsigned char>('\b')] = 'b';
        action[static_cast<unsigned char>('\f')] = 'f';
    }
};

const EscapeTable kEscapeAscii(true);
const EscapeTable kEscapeUnicode(false);

inline void append_u_escape(std::string& out, std::uint32_t unit) {
    char buf[6] = {'\\',
                   'u',
                   kHex[(unit >> 12) & 0xf],
                   kHex[(unit >> 8) & 0xf],
                   kHex[(unit >> 4) & 0xf],
                   kHex[unit & 0xf]};
    out.append(buf, 6);
}

inline void append_utf8(std::string& out, std::uint32_t cp) {
    char buf[4];
    if (cp < 0x80) {
        out.push_back(static_cast<char>(cp));
    } else if (cp < 0x800) {
        buf[0] = static_cast<char>(0xc0 | (cp >> 6));
        buf[1] = static_cast<char>(0x80 | (cp & 0x3f));
        out.append(buf, 2);
    } else if (cp < 0x10000) {
        buf[0] = static_cast<char>(0xe0 | (cp >> 12));
        buf[1] = static_cast<char>(0x80 | ((cp >> 6) & 0x3f));
        buf[2] = static_cast<char>(0x80 | (cp & 0x3f));
        out.append(buf, 3);
    } else {
        buf[0] = static_cast<char>(0xf0 | (cp >> 18));
        buf[1] = static_cast<char>(0x80 | ((cp >> 12) & 0x3f));
        buf[2] = static_cast<char>(0x80 | ((cp >> 6) & 0x3f));
        buf[3] = static_cast<char>(0x80 | (cp & 0x3f));
        out.append(buf, 4);
    }
}

}  // namespace

std::size_t format_double_repr(double value, char* out) {
    // std::to_chars in scientific form gives the shortest digits that round-trip, the
    // same digits as Python's repr (both are shortest round-trip, ties to even); only
    // the layout differs, and Python's rule for it is: exponent form when the decimal
    // exponent is < -4 or >= 16, otherwise positional with at least one fractional digit.
    char sci[40];
    auto res = std::to_chars(sci, sci + sizeof sci, value, std::chars_format::scientific);
    const char* end = res.ptr;
    const char* p = sci;
    char* o = out;
    if (*p == '-') {
        *o++ = '-';
        ++p;
    }
    char digits[24];
    std::size_t nd = 0;
    for (; p < end && *p != 'e'; ++p) {
        if (*p != '.') digits[nd++] = *p;
    }
    int exp10 = 0;
    {
        ++p;  // 'e'
        bool neg = *p == '-';
        ++p;  // sign
        for (; p < end; ++p) exp10 = exp10 * 10 + (*p - '0');
        if (neg) exp10 = -exp10;
    }
    if (exp10 < -4 || exp10 >= 16) {
        *o++ = digits[0];
        if (nd > 1) {
            *o++ = '.';
            std::memcpy(o, digits + 1, nd - 1);
            o += nd - 1;
        }
        *o++ = 'e';
        *o++ = exp10 < 0 ? '-' : '+';
        int a = exp10 < 0 ? -exp10 : exp10;
        if (a >= 100) {
            *o++ = static_cast<char>('0' + a / 100);
            a %= 100;
            *o++ = static_cast<char>('0' + a / 10);
            *o++ = static_cast<char>('0' + a % 10);
        } else {
            *o++ = static_cast<char>('0' + a / 10);
            *o++ = static_cast<char>('0' + a % 10);
        }
    } else if (exp10 < 0) {
        *o++ = '0';
        *o++ = '.';
        for (int i = -1; i > exp10; --i) *o++ = '0';
        std::memcpy(o, digits, nd);
        o += nd;
    } else {
        // Integer part is digits[0..exp10], padded with zeros when digits run out.
        std::size_t int_len = static_cast<std::size_t>(exp10) + 1;
        for (std::size_t i = 0; i < int_len; ++i) *o++ = i < nd ? digits[i] : '0';
        *o++ = '.';
        if (nd > int_len) {
            std::memcpy(o, digits + int_len, nd - int_len);
            o += nd - int_len;
        } else {
            *o++ = '0';
        }
    }
    return static_cast<std::size_t>(o - out);
}

namespace {
inline char* put_digits(char* o, int value, int width) {
    for (int i = width - 1; i >= 0; --i) {
        o[i] = static_cast<char>('0' + value % 10);
        value /= 10;
    }
    return o + width;
}
}  // namespace

std::size_t format_iso_date(int year, int month, int day, char* out) {
    char* o = put_digits(out, year, 4);
    *o++ = '-';
    o = put_digits(o, month, 2);
    *o++ = '-';
    o = put_digits(o, day, 2);
    return static_cast<std::size_t>(o - out);
}

std::size_t format_iso_time(int hour, int minute, int second, int microsecond, char* out) {
    char* o = put_digits(out, hour, 2);
    *o++ = ':';
    o = put_digits(o, minute, 2);
    *o++ = ':';
    o = put_digits(o, second, 2);
    if (microsecond) {
        *o++ = '.';
        o = put_digits(o, microsecond, 6);
    }
    return static_cast<std::size_t>(o - out);
}

std::size_t format_uuid(std::uint64_t high, std::uint64_t low, char* out) {
    char* o = out;
    for (int i = 0; i < 32; ++i) {
        if (i == 8 || i == 12 || i == 16 || i == 20) *o++ = '-';
        std::uint64_t word = i < 16 ? high : low;
        int shift = 60 - 4 * (i % 16);
        *o++ = kHex[(word >> shift) & 0xf];
    }
    return static_cast<std::size_t>(o - out);
}

void append_base64url(const std::uint8_t* data, std::size_t n, std::string& out) {
    static constexpr char kAlphabet[] =
        "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    out.reserve(out.size() + (n + 2) / 3 * 4);
    std::size_t i = 0;
    for (; i + 3 <= n; i += 3) {
        std::uint32_t v =
            (std::uint32_t{data[i]} << 16) | (std::uint32_t{data[i + 1]} << 8) | data[i + 2];
        char quad[4] = {kAlphabet[v >> 18], kAlphabet[(v >> 12) & 63], kAlphabet[(v >> 6) & 63],
                        kAlphabet[v & 63]};
        out.append(quad, 4);
    }
    if (i < n) {
        std::uint32_t v = std::uint32_t{data[i]} << 16;
        if (i + 1 < n) v |= std::uint32_t{data[i + 1]} << 8;
        char quad[4] = {kAlphabet[v >> 18], kAlphabet[(v >> 12) & 63],
                        i + 1 < n ? kAlphabet[(v >> 6) & 63] : '=', '='};
        out.append(quad, 4);
    }
}

Writer::Writer(WriterOptions options) : opt_(std::move(options)) {
    out_.reserve(512);
    stack_.reserve(16);
}

void Writer::raw(std::string_view text) {
    out_.append(text.data(), text.size());
    for (unsigned char c : text) {
        if (c >= 0x80) ascii_only_ = false;
    }
}

void Writer::newline_indent(std::size_t levels) {
    out_.push_back('\n');
    for (std::size_t i = 0; i < levels; ++i) out_ += opt_.indent;
}

// Called before every item of a container: the key of an object member, or an array
// element. Writes the separator and, with indent, the line break.
void Writer::before_item() {
    Level& top = stack_.back();
    if (!top.empty) {
        out_ += opt_.has_indent ? "," : ", ";
    }
    top.empty = false;
    if (opt_.has_indent) newline_indent(stack_.size());
}

void Writer::before_value() {
    if (stack_.empty()) return;
    Level& top = stack_.back();
    if (top.is_object) {
        assert(top.after_key && "object value without a key");
        top.after_key = false;
        return;
    }
    before_item();
}

void Writer::null() {
    before_value();
    out_ += "null";
}

void Writer::boolean(bool v) {
    before_value();
    out_ += v ? "true" : "false";
}

void Writer::integer(std::int64_t v) {
    before_value();
    char buf[24];
    auto res = std::to_chars(buf, buf + sizeof buf, v);
    out_.append(buf, static_cast<std::size_t>(res.ptr - buf));
}

void Writer::integer_text(std::string_view digits) {
    before_value();
    out_.append(digits.data(), digits.size());
}

void Writer::floating(double v) {
    before_value();
    if (!std::isfinite(v)) {
        out_ += "null";
        return;
    }
    char buf[40];
    out_.append(buf, format_double_repr(v, buf));
}

void Writer::string_utf8_ascii(std::string_view ascii) {
    before_value();
    quoted(reinterpret_cast<const std::uint8_t*>(ascii.data()), ascii.size());
}

void Writer::key_ascii(std::string_view ascii) {
    before_item();
    quoted(reinterpret_cast<const std::uint8_t*>(ascii.data()), ascii.size());
    key_separator();
}

void Writer::begin_object() {
    before_value();
    out_.push_back('{');
    stack_.push_back(Level{true, true, false});
}

void Writer::end_object() {
    assert(!stack_.empty() && stack_.back().is_object);
    bool empty = stack_.back().empty;
    stack_.pop_back();
    if (!empty && opt_.has_indent) newline_indent(stack_.size());
    out_.push_back('}');
}

void Writer::begin_array() {
    before_value();
    out_.push_back('[');
    stack_.push_back(Level{false, true, false});
}

void Writer::end_array() {
    assert(!stack_.empty() && !stack_.back().is_object);
    bool empty = stack_.back().empty;
    stack_.pop_back();
    if (!empty && opt_.has_indent) newline_indent(stack_.size());
    out_.push_back(']');
}

template <class CharT>
void Writer::escape_run(const CharT* s, std::size_t n) {
    const EscapeTable& table = opt_.ensure_ascii ? kEscapeAscii : kEscapeUnicode;
    std::size_t i = 0;
    while (i < n) {
        // Copy the longest run of byte-sized code points that need no escape at once.
        std::size_t start = i;
        if constexpr (sizeof(CharT) == 1) {
            while (i < n && table.action[s[i]] == 0 && s[i] < 0x80) ++i;
            if (i > start) out_.append(reinterpret_cast<const char*>(s + start), i - start);
        } else {
            while (i < n && s[i] < 0x80 && table.action[s[i]] == 0) {
                out_.push_back(static_cast<char>(s[i]));
                ++i;
            }
        }
        if (i == n) break;
        std::uint32_t cp = static_cast<std::uint32_t>(s[i]);
        ++i;
        if (cp < 0x80 || (cp < 0x100 && table.action[cp] != 0)) {
            char a = table.action[cp];
            if (a == 1) {
                append_u_escape(out_, cp);
            } else {
                out_.push_back('\\');
                out_.push_back(a);
            }
            continue;
        }
        if ((cp >= 0xd800 && cp <= 0xdfff) || cp == 0x2028 || cp == 0x2029) {
            // A surrogate code point (never raw, see header) or a Unicode line/paragraph
            // separator, which line-oriented log readers would split a record at.
            append_u_escape(out_, cp);
            continue;
        }
        if (opt_.ensure_ascii) {
            if (cp >= 0x10000) {
                std::uint32_t v = cp - 0x10000;
                append_u_escape(out_, 0xd800 | (v >> 10));
                append_u_escape(out_, 0xdc00 | (v & 0x3ff));
            } else {
                append_u_escape(out_, cp);
            }
        } else {
            ascii_only_ = false;
            append_utf8(out_, cp);
        }
    }
}

template <class CharT>
void Writer::quoted(const CharT* s, std::size_t n) {
    out_.push_back('"');
    escape_run(s, n);
    out_.push_back('"');
}

template <class CharT>
void Writer::quoted_spans(const CharT* s, std::size_t n, const std::vector<Span>& spans,
                          std::string_view replacement) {
    out_.push_back('"');
    std::size_t pos = 0;
    for (const Span& sp : spans) {
        assert(sp.begin >= pos && sp.end <= n && sp.begin <= sp.end);
        escape_run(s + pos, sp.begin - pos);
        escape_run(reinterpret_cast<const std::uint8_t*>(replacement.data()), replacement.size());
        pos = sp.end;
    }
    escape_run(s + pos, n - pos);
    out_.push_back('"');
}

template void Writer::quoted<std::uint8_t>(const std::uint8_t*, std::size_t);
template void Writer::quoted<std::uint16_t>(const std::uint16_t*, std::size_t);
template void Writer::quoted<std::uint32_t>(const std::uint32_t*, std::size_t);
template void Writer::quoted_spans<std::uint8_t>(const std::uint8_t*, std::size_t,
                                                 const std::vector<Span>&, std::string_view);
template void Writer::quoted_spans<std::uint16_t>(const std::uint16_t*, std::size_t,
                                                  const std::vector<Span>&, std::string_view);
template void Writer::quoted_spans<std::uint32_t>(const std::uint32_t*, std::size_t,
                                                  const std::vector<Span>&, std::string_view);

}  // namespace fastcache::json
