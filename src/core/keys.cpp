// Key building and validation; see keys.hpp.
#include "core/keys.hpp"

#include <charconv>

namespace fastcache::keys {

unsigned check(std::string_view key) noexcept {
    unsigned problems = kOk;
    std::size_t chars = 0;
    for (unsigned char c : key) {
        // UTF-8 continuation bytes (10xxxxxx) do not start a code point; every byte of a
        // forbidden character is ASCII, so checking bytes is exact.
        chars += (c & 0xC0) != 0x80;
        if (c <= 0x20 || c == 0x7f) problems |= kBadChar;
    }
    if (chars > kMaxKeyChars) problems |= kTooLong;
    return problems;
}

unsigned make(std::string_view prefix, std::int64_t version, std::string_view key,
              std::string& out) {
    char digits[24];
    auto [end, ec] = std::to_chars(digits, digits + sizeof digits, version);
    (void)ec;  // 24 bytes always hold an int64
    out.clear();
    out.reserve(prefix.size() + (end - digits) + key.size() + 2);
    out.append(prefix).push_back(':');
    out.append(digits, end).push_back(':');
    out.append(key);
    return check(out);
}

}  // namespace fastcache::keys
