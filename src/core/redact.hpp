// Redaction rules for log records: which keys look secret, and which spans of a string
// value are card numbers, e-mail addresses or bearer tokens.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include "core/json_writer.hpp"

namespace fastcache::redact {

// Opt-in value patterns, combined as bit flags.
enum ValuePattern : unsigned {
    kCard = 1u << 0,    // 13-19 digits, single spaces or dashes allowed between, Luhn-valid
    kEmail = 1u << 1,   // local@domain.tld
    kBearer = 1u << 2,  // the token after "Bearer " (case-insensitive); the word stays
};

// Keys are compared after folding: ASCII letters lower-cased, '_' and '-' removed, so
// the needle "api_key" matches "API_KEY", "api-key", "apiKey" and "x_apikey". A key
// looks secret when its folded form contains any folded needle.
//
// Thread safety: immutable after construction; any number of threads may call the const
// members. Complexity: O(len(key) * needles) per call (keys and needles are short).
class KeyMatcher {
public:
    explicit KeyMatcher(const std::vector<std::string>& needles);
    bool empty() const { return needles_.empty(); }

    template <class CharT>
    bool matches(const CharT* s, std::size_t n) const;

private:
    std::vector<std::string> needles_;
};

// Appends to `out` the spans of `s` that match any pattern in `patterns`, sorted and
// non-overlapping. Complexity: O(n) per pattern. Never throws except std::bad_alloc.
template <class CharT>
void find_value_spans(const CharT* s, std::size_t n, unsigned patterns,
                      std::vector<json::Span>& out);

// The Luhn checksum over the decimal digits in `digits` (only '0'..'9').
bool luhn_valid(const std::string& digits);

}  // namespace fastcache::redact
