// Redaction rules for log records: which keys look secret, and which spans of a string
// value are card numbers, e-mail addresses, bearer tokens or secret query parameters.
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
    kQuery = 1u << 3,   // the value of a query parameter whose name looks secret (?token=v)
};

// Decides whether a key (a dict key, a pair's first item, a query parameter name) names
// a secret. Two kinds of needle:
// - substrings, compared after folding (ASCII letters lower-cased, '_' and '-' removed),
//   so "api_key" matches "API_KEY", "api-key", "apiKey" and "x_apikey". This is the
//   rule of Django's error reporter (a case-insensitive substring search), which stays
//   sound for long needles such as "secret" or "signature";
// - words, for short needles ("otp", "jwt", "pwd") that as substrings would hide
//   innocent keys ("footprint"): they match a whole word of the key, words being split at
//   any character other than a letter or digit and where a lower-case letter is
//   followed by an upper-case one ("user_otp", "otpCode", "X-JWT" but not "hotpot").
//
// Thread safety: immutable after construction; any number of threads may call the const
// members. Complexity: O(len(key) * needles) per call (keys and needles are short).
class KeyMatcher {
public:
    explicit KeyMatcher(const std::vector<std::string>& needles,
                        const std::vector<std::string>& words = {});
    bool empty() const { return needles_.empty() && words_.empty(); }

    template <class CharT>
    bool matches(const CharT* s, std::size_t n) const;

private:
    std::vector<std::string> needles_;
    std::vector<std::string> words_;
};

// Appends to `out` the spans of `s` that match any pattern in `patterns`, sorted and
// non-overlapping. `keys` decides which query parameters are secret (kQuery); with
// `bare_query` the text is a query string itself ("a=1&token=x"), so its first name
// needs no '?' before it. Complexity: O(n) per pattern (kQuery: plus one key match per
// parameter). Never throws except std::bad_alloc.
template <class CharT>
void find_value_spans(const CharT* s, std::size_t n, unsigned patterns,
                      std::vector<json::Span>& out, const KeyMatcher* keys = nullptr,
                      bool bare_query = false);

// The Luhn checksum over the decimal digits in `digits` (only '0'..'9').
bool luhn_valid(const std::string& digits);

}  // namespace fastcache::redact
