// A small reader and writer of Redis's RESP2 protocol, enough for the invalidation
// listener: commands out, replies and pub/sub messages in.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

namespace fastcache::resp {

// One reply. `kind` is the RESP2 type byte: '+' status, '-' error, ':' integer, '$' bulk
// string, '*' array; `null` marks a null bulk string or array.
struct Reply {
    char kind = 0;
    bool null = false;
    std::int64_t integer = 0;
    std::string text;  // status, error or bulk string
    std::vector<Reply> elements;

    bool is_error() const noexcept { return kind == '-'; }
    // A status or bulk string equal to `s`, ignoring ASCII case.
    bool is(std::string_view s) const noexcept;
};

// Thrown on bytes that are not RESP2 (or nest deeper / announce more than the limits).
struct ProtocolError {
    std::string what;
};

// Collects bytes from a socket and hands out complete replies, in order.
// Thread safety: none (one per connection). Complexity: linear in the bytes fed (a reply
// that arrives in many pieces is re-scanned from its start on each piece; listener
// messages are small). Exceptions: ProtocolError from next(); std::bad_alloc.
class Reader {
public:
    void feed(const char* data, std::size_t n) { buf_.append(data, n); }
    // The next complete reply into `out`: true, or false when more bytes are needed.
    bool next(Reply& out);
    std::size_t buffered() const noexcept { return buf_.size() - pos_; }

private:
    // 0: incomplete; otherwise the position after the reply.
    std::size_t parse(std::size_t at, Reply& out, int depth) const;

    std::string buf_;
    std::size_t pos_ = 0;
};

// The command as a RESP2 array of bulk strings.
std::string command(const std::vector<std::string>& args);

}  // namespace fastcache::resp
