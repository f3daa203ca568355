// RESP2 reading and writing for the invalidation listener (see resp.hpp).
#include "core/resp.hpp"

#include <cctype>

namespace fastcache::resp {

namespace {

constexpr int kMaxDepth = 8;
constexpr std::int64_t kMaxLength = 512 * 1024 * 1024;  // Redis's own bulk limit
constexpr std::int64_t kMaxElements = 16 * 1024 * 1024;

// Where the line starting at `at` ends (its CR), or npos if it is incomplete.
std::size_t line_end(const std::string& buf, std::size_t at) { return buf.find("\r\n", at); }

std::int64_t to_int(std::string_view s) {
    if (s.empty() || s.size() > 20) throw ProtocolError{"bad length or integer"};
    bool neg = s[0] == '-';
    std::size_t i = neg ? 1 : 0;
    if (i == s.size() || s.size() - i > 18) throw ProtocolError{"bad length or integer"};
    std::int64_t v = 0;
    for (; i < s.size(); ++i) {
        if (s[i] < '0' || s[i] > '9') throw ProtocolError{"bad length or integer"};
        v = v * 10 + (s[i] - '0');
    }
    return neg ? -v : v;
}

}  // namespace

bool Reply::is(std::string_view s) const noexcept {
    if ((kind != '+' && kind != '$') || null || text.size() != s.size()) return false;
    for (std::size_t i = 0; i < s.size(); ++i) {
        if (std::tolower(static_cast<unsigned char>(text[i])) !=
            std::tolower(static_cast<unsigned char>(s[i]))) {
            return false;
        }
    }
    return true;
}

std::size_t Reader::parse(std::size_t at, Reply& out, int depth) const {
    if (depth > kMaxDepth) throw ProtocolError{"replies nested too deep"};
    if (at >= buf_.size()) return 0;
    const char kind = buf_[at];
    const std::size_t cr = line_end(buf_, at + 1);
    if (cr == std::string::npos) return 0;
    const std::string_view line(buf_.data() + at + 1, cr - at - 1);
    const std::size_t after = cr + 2;
    out = Reply{};
    out.kind = kind;
    switch (kind) {
        case '+':
        case '-':
            out.text.assign(line);
            return after;
        case ':':
            out.integer = to_int(line);
            return after;
        case '$': {
            const std::int64_t n = to_int(line);
            if (n < 0) {
                out.null = true;
                return after;
            }
            if (n > kMaxLength) throw ProtocolError{"bulk string too long"};
            const std::size_t len = static_cast<std::size_t>(n);
            if (buf_.size() < after + len + 2) return 0;
            if (buf_.compare(after + len, 2, "\r\n") != 0)
                throw ProtocolError{"bulk string not terminated"};
            out.text.assign(buf_, after, len);
            return after + len + 2;
        }
        case '*': {
            const std::int64_t n = to_int(line);
            if (n < 0) {
                out.null = true;
                return after;
            }
            if (n > kMaxElements) throw ProtocolError{"array too long"};
            std::size_t pos = after;
            out.elements.resize(static_cast<std::size_t>(n));
            for (auto& e : out.elements) {
                pos = parse(pos, e, depth + 1);
                if (pos == 0) return 0;
            }
            return pos;
        }
        default:
            throw ProtocolError{std::string("unexpected reply type byte '") + kind + "'"};
    }
}

bool Reader::next(Reply& out) {
    const std::size_t end = parse(pos_, out, 0);
    if (end == 0) return false;
    pos_ = end;
    if (pos_ == buf_.size()) {
        buf_.clear();
        pos_ = 0;
    } else if (pos_ > 65536) {
        buf_.erase(0, pos_);
        pos_ = 0;
    }
    return true;
}

std::string command(const std::vector<std::string>& args) {
    std::string out = "*" + std::to_string(args.size()) + "\r\n";
    for (const auto& a : args) {
        out += "$" + std::to_string(a.size()) + "\r\n";
        out += a;
        out += "\r\n";
    }
    return out;
}

}  // namespace fastcache::resp
