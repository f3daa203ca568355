// Cache keys as Django builds them with its default key function ("prefix:version:key"),
// and the checks behind Django's CacheKeyWarning, done in one pass.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>

namespace fastcache::keys {

// Django warns about keys memcached would refuse (django.core.cache.backends.base):
// longer than 250 characters, or containing a character in [\x00-\x20\x7f].
inline constexpr std::size_t kMaxKeyChars = 250;

enum Problem : unsigned {
    kOk = 0,
    kTooLong = 1,
    kBadChar = 2,
};

// Checks a final key given as UTF-8. Length is counted in code points, as Python's len().
unsigned check(std::string_view utf8_key) noexcept;

// Builds "<prefix>:<version>:<key>" into `out` (replacing its content) and checks it.
unsigned make(std::string_view prefix, std::int64_t version, std::string_view key,
              std::string& out);

}  // namespace fastcache::keys
