// Redaction rules: secret-looking keys and sensitive value patterns.
#include "core/redact.hpp"

#include <algorithm>

namespace fastcache::redact {

namespace {

template <class CharT>
inline bool is_digit(CharT c) {
    return c >= '0' && c <= '9';
}
template <class CharT>
inline bool is_alpha(CharT c) {
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z');
}
template <class CharT>
inline bool is_alnum(CharT c) {
    return is_digit(c) || is_alpha(c);
}
template <class CharT>
inline bool is_email_local(CharT c) {
    return is_alnum(c) || c == '.' || c == '_' || c == '%' || c == '+' || c == '-';
}
template <class CharT>
inline bool is_email_domain(CharT c) {
    return is_alnum(c) || c == '.' || c == '-';
}
template <class CharT>
inline bool is_token_char(CharT c) {
    return is_alnum(c) || c == '-' || c == '.' || c == '_' || c == '~' || c == '+' || c == '/';
}
inline char fold(std::uint32_t c) {
    if (c >= 'A' && c <= 'Z') return static_cast<char>(c - 'A' + 'a');
    if (c < 0x80) return static_cast<char>(c);
    // The four non-ASCII letters that Python's case-insensitive regular expressions (and
    // so Django's rule) match to an ASCII letter: the dotted and dotless I, the long S
    // and the Kelvin sign.
    if (c == 0x130 || c == 0x131) return 'i';
    if (c == 0x17f) return 's';
    if (c == 0x212a) return 'k';
    return '\x7f';  // any other non-ASCII character never matches an ASCII needle
}

std::string fold_needle(const std::string& s) {
    std::string out;
    for (unsigned char c : s) {
        if (c == '_' || c == '-') continue;
        out.push_back(fold(c));
    }
    return out;
}

template <class CharT>
void find_cards(const CharT* s, std::size_t n, std::vector<json::Span>& out) {
    std::size_t i = 0;
    std::string digits;
    while (i < n) {
        if (!is_digit(s[i]) || (i > 0 && is_alnum(s[i - 1]))) {
            ++i;
            continue;
        }
        std::size_t start = i;
        std::size_t last = i;  // one past the last digit
        digits.clear();
        while (i < n) {
            if (is_digit(s[i])) {
                digits.push_back(static_cast<char>(s[i]));
                last = ++i;
            } else if ((s[i] == ' ' || s[i] == '-') && i + 1 < n && is_digit(s[i + 1])) {
                ++i;
            } else {
                break;
            }
        }
        bool bounded = last == n || !is_alnum(s[last]);
        if (bounded && digits.size() >= 13 && digits.size() <= 19 && luhn_valid(digits)) {
            out.push_back({start, last});
        }
        i = last == start ? start + 1 : last;
    }
}

template <class CharT>
void find_emails(const CharT* s, std::size_t n, std::vector<json::Span>& out) {
    for (std::size_t at = 0; at < n; ++at) {
        if (s[at] != '@') continue;
        std::size_t l = at;
        while (l > 0 && is_email_local(s[l - 1])) --l;
        std::size_t r = at + 1;
        while (r < n && is_email_domain(s[r])) ++r;
        while (r > at + 1 && (s[r - 1] == '.' || s[r - 1] == '-')) --r;
        if (l == at || r == at + 1) continue;
        // The domain needs a dot and a top-level label of at least two letters.
        std::size_t dot = r;
        while (dot > at + 1 && s[dot - 1] != '.') --dot;
        if (dot == at + 1 || r - dot < 2) continue;
        bool tld_alpha = true;
        for (std::size_t k = dot; k < r; ++k) tld_alpha = tld_alpha && is_alpha(s[k]);
        if (!tld_alpha || dot - 1 == at + 1) continue;
        out.push_back({l, r});
        at = r - 1;
    }
}

template <class CharT>
void find_bearer(const CharT* s, std::size_t n, std::vector<json::Span>& out) {
    static const char kWord[] = "bearer";
    for (std::size_t i = 0; i + 6 < n; ++i) {
        if (i > 0 && is_alnum(s[i - 1])) continue;
        bool match = true;
        for (std::size_t k = 0; k < 6 && match; ++k) match = fold(s[i + k]) == kWord[k];
        if (!match) continue;
        std::size_t j = i + 6;
        if (j >= n || s[j] != ' ') continue;
        while (j < n && s[j] == ' ') ++j;
        std::size_t start = j;
        while (j < n && is_token_char(s[j])) ++j;
        while (j < n && s[j] == '=') ++j;
        if (j > start) {
            out.push_back({start, j});
            i = j - 1;
        }
    }
}

// Query parameters: "?name=value" or "&name=value" (";" too, an old separator), the
// value running to the next separator, fragment, quote, angle bracket or whitespace, so
// a URL inside a sentence or a quoted access-log line ends where the URL ends.
template <class CharT>
inline bool ends_query_value(CharT ch) {
    const auto c = static_cast<std::uint32_t>(ch);
    return c <= 0x20 || c == 0x7f || c == 0x85 || c == 0xa0 || c == 0x2028 || c == 0x2029 ||
           c == '&' || c == ';' || c == '#' || c == '"' || c == '\'' || c == '<' || c == '>' ||
           c == '`';
}
template <class CharT>
inline bool is_param_name(CharT c) {
    return is_alnum(c) || c == '_' || c == '-' || c == '.' || c == '[' || c == ']' || c == '%';
}

template <class CharT>
void find_query(const CharT* s, std::size_t n, const KeyMatcher& keys, bool bare,
                std::vector<json::Span>& out) {
    for (std::size_t i = 0; i < n; ++i) {
        std::size_t name = 0;
        if (bare && i == 0 && is_param_name(s[0])) {
            name = 0;
        } else if (s[i] == '?' || s[i] == '&' || s[i] == ';') {
            name = i + 1;
        } else {
            continue;
        }
        std::size_t eq = name;
        while (eq < n && is_param_name(s[eq])) ++eq;
        if (eq == name || eq >= n || s[eq] != '=') continue;
        std::size_t end = eq + 1;
        while (end < n && !ends_query_value(s[end])) ++end;
        if (end > eq + 1 && keys.matches(s + name, eq - name)) out.push_back({eq + 1, end});
        i = end > i ? end - 1 : i;
    }
}

template <class CharT>
inline bool is_upper(CharT c) {
    return c >= 'A' && c <= 'Z';
}
template <class CharT>
inline bool is_lower(CharT c) {
    return c >= 'a' && c <= 'z';
}

}  // namespace

bool luhn_valid(const std::string& digits) {
    int sum = 0;
    bool dbl = false;
    for (auto it = digits.rbegin(); it != digits.rend(); ++it) {
        int d = *it - '0';
        if (dbl) {
            d *= 2;
            if (d > 9) d -= 9;
        }
        sum += d;
        dbl = !dbl;
    }
    return sum % 10 == 0;
}

KeyMatcher::KeyMatcher(const std::vector<std::string>& needles,
                       const std::vector<std::string>& words) {
    for (const auto& n : needles) {
        std::string f = fold_needle(n);
        if (!f.empty()) needles_.push_back(std::move(f));
    }
    for (const auto& w : words) {
        std::string f;
        for (unsigned char c : w) {
            if (is_alnum(c)) f.push_back(fold(c));
        }
        if (!f.empty()) words_.push_back(std::move(f));
    }
}

template <class CharT>
bool KeyMatcher::matches(const CharT* s, std::size_t n) const {
    if (!words_.empty()) {
        std::size_t i = 0;
        while (i < n) {
            while (i < n && !is_alnum(s[i])) ++i;
            std::size_t start = i;
            while (i < n && is_alnum(s[i]) && !(i > start && is_lower(s[i - 1]) && is_upper(s[i])))
                ++i;
            std::size_t len = i - start;
            for (const auto& w : words_) {
                if (w.size() != len) continue;
                bool same = true;
                for (std::size_t k = 0; k < len && same; ++k) same = fold(s[start + k]) == w[k];
                if (same) return true;
            }
        }
    }
    if (needles_.empty()) return false;
    char stack_buf[128];
    std::string heap_buf;
    char* folded = stack_buf;
    if (n > sizeof stack_buf) {
        heap_buf.resize(n);
        folded = heap_buf.data();
    }
    std::size_t m = 0;
    for (std::size_t i = 0; i < n; ++i) {
        std::uint32_t c = static_cast<std::uint32_t>(s[i]);
        if (c == '_' || c == '-') continue;
        folded[m++] = fold(c);
    }
    std::string_view hay(folded, m);
    for (const auto& needle : needles_) {
        if (hay.find(needle) != std::string_view::npos) return true;
    }
    return false;
}

template <class CharT>
void find_value_spans(const CharT* s, std::size_t n, unsigned patterns,
                      std::vector<json::Span>& out, const KeyMatcher* keys, bool bare_query) {
    std::size_t first = out.size();
    if ((patterns & kQuery) && keys && !keys->empty()) find_query(s, n, *keys, bare_query, out);
    if (patterns & kCard) find_cards(s, n, out);
    if (patterns & kEmail) find_emails(s, n, out);
    if (patterns & kBearer) find_bearer(s, n, out);
    if (out.size() - first < 2) return;
    std::sort(out.begin() + static_cast<std::ptrdiff_t>(first), out.end(),
              [](const json::Span& a, const json::Span& b) { return a.begin < b.begin; });
    // Merge overlaps so the writer sees sorted, disjoint spans.
    std::size_t w = first;
    for (std::size_t r = first + 1; r < out.size(); ++r) {
        if (out[r].begin <= out[w].end) {
            out[w].end = std::max(out[w].end, out[r].end);
        } else {
            out[++w] = out[r];
        }
    }
    out.resize(w + 1);
}

template bool KeyMatcher::matches<std::uint8_t>(const std::uint8_t*, std::size_t) const;
template bool KeyMatcher::matches<std::uint16_t>(const std::uint16_t*, std::size_t) const;
template bool KeyMatcher::matches<std::uint32_t>(const std::uint32_t*, std::size_t) const;
template void find_value_spans<std::uint8_t>(const std::uint8_t*, std::size_t, unsigned,
                                             std::vector<json::Span>&, const KeyMatcher*, bool);
template void find_value_spans<std::uint16_t>(const std::uint16_t*, std::size_t, unsigned,
                                              std::vector<json::Span>&, const KeyMatcher*, bool);
template void find_value_spans<std::uint32_t>(const std::uint32_t*, std::size_t, unsigned,
                                              std::vector<json::Span>&, const KeyMatcher*, bool);

}  // namespace fastcache::redact
