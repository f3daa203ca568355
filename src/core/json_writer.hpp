// A streaming JSON writer whose output is byte-identical to Python's json.dumps for the
// same values and settings (escaping, separators, indentation, float repr), except where
// json.dumps emits invalid JSON: NaN/Infinity are written as null and lone surrogates are
// always escaped; and where a record would not stay one line: U+0085, U+2028 and U+2029
// are escaped with ensure_ascii=False too.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

namespace fastcache::json {

struct WriterOptions {
    bool ensure_ascii = true;
    // Indentation unit, as json.dumps(indent=...) after it turns an int into spaces.
    // has_indent=false is json.dumps(indent=None): one line, ", " and ": " separators.
    bool has_indent = false;
    std::string indent;
};

// A half-open range [begin, end) of code units inside a string, replaced on output.
struct Span {
    std::size_t begin;
    std::size_t end;
};

// Writes Python's repr() of a finite double (shortest round-trip digits, exponent form
// outside 1e-4 <= |x| < 1e16, ".0" for integral values). `out` needs 32 chars.
// Returns the number of chars written. Precondition: std::isfinite(value).
std::size_t format_double_repr(double value, char* out);

// ISO 8601 text as Python's date/time isoformat() writes it: "YYYY-MM-DD",
// "HH:MM:SS" or "HH:MM:SS.ffffff" (microseconds only when non-zero). `out` needs 16 chars.
std::size_t format_iso_date(int year, int month, int day, char* out);
std::size_t format_iso_time(int hour, int minute, int second, int microsecond, char* out);

// The canonical 8-4-4-4-12 lower-case hex form of a 128-bit UUID. `out` needs 36 chars.
std::size_t format_uuid(std::uint64_t high, std::uint64_t low, char* out);

// URL-safe base64 with padding, as Python's base64.urlsafe_b64encode, appended to `out`.
void append_base64url(const std::uint8_t* data, std::size_t n, std::string& out);

// Thread safety: none; one writer per thread (or per call). Complexity: every method is
// O(size of what it writes). Exceptions: std::bad_alloc only; the caller is responsible
// for calling begin/end and key/value in a well-formed order (checked in debug builds).
//
// Strings are given as arrays of code points of width 1, 2 or 4 bytes (the three storage
// kinds of a Python str), so callers never transcode: values 0xD800-0xDFFF are
// surrogates, which json.dumps escapes as \udxxx with ensure_ascii and so does this
// writer in both modes (raw surrogates would make the UTF-8 output invalid).
class Writer {
public:
    explicit Writer(WriterOptions options);

    void clear() {
        out_.clear();
        stack_.clear();
        ascii_only_ = true;
    }
    const std::string& str() const { return out_; }
    // True when everything written so far is ASCII (always, with ensure_ascii).
    bool ascii_only() const { return ascii_only_; }
    std::size_t depth() const { return stack_.size(); }

    // Text written verbatim before the JSON value (python-json-logger's `prefix`).
    void raw(std::string_view text);

    void null();
    void boolean(bool v);
    void integer(std::int64_t v);
    // A pre-formatted integer (a Python int beyond 64 bits): digits written as is.
    void integer_text(std::string_view digits);
    // Non-finite values are written as null: json.dumps would write NaN, which is not JSON.
    void floating(double v);

    template <class CharT>
    void string(const CharT* s, std::size_t n) {
        before_value();
        quoted(s, n);
    }
    // A string whose spans (sorted, non-overlapping) are each replaced by `replacement`.
    template <class CharT>
    void string_redacted(const CharT* s, std::size_t n, const std::vector<Span>& spans,
                         std::string_view replacement) {
        before_value();
        quoted_spans(s, n, spans, replacement);
    }
    void string_utf8_ascii(std::string_view ascii);  // caller guarantees ASCII only

    void begin_object();
    void end_object();
    void begin_array();
    void end_array();

    // Object keys; json.dumps writes them as strings and so does this writer.
    template <class CharT>
    void key(const CharT* s, std::size_t n) {
        before_item();
        quoted(s, n);
        key_separator();
    }
    void key_ascii(std::string_view ascii);

private:
    struct Level {
        bool is_object;
        bool empty;
        bool after_key;  // objects only: a key was written, its value comes next
    };

    void before_value();
    void before_item();
    void key_separator() {
        out_ += ": ";
        stack_.back().after_key = true;
    }
    void newline_indent(std::size_t levels);

    template <class CharT>
    void quoted(const CharT* s, std::size_t n);
    template <class CharT>
    void quoted_spans(const CharT* s, std::size_t n, const std::vector<Span>& spans,
                      std::string_view replacement);
    template <class CharT>
    void escape_run(const CharT* s, std::size_t n);

    WriterOptions opt_;
    std::string out_;
    std::vector<Level> stack_;
    bool ascii_only_ = true;
};

}  // namespace fastcache::json
