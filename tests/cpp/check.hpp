// The C++ tests' minimal harness: CHECKs count, a failure prints where and what, and the
// run goes on; check_report() prints "N passed, N failed" (the line CI reads) last.
#pragma once

#include <cstdio>
#include <string>
#include <type_traits>

inline int g_passed = 0;
inline int g_failed = 0;

// How a CHECK_EQ operand is printed: strings quoted, enums as their number.
template <class T>
std::string check_show(const T& v) {
    if constexpr (std::is_convertible_v<T, std::string>) {
        return "\"" + std::string(v) + "\"";
    } else if constexpr (std::is_enum_v<T>) {
        return std::to_string(static_cast<long long>(v));
    } else {
        return std::to_string(v);
    }
}

#define CHECK(cond)                                                              \
    do {                                                                         \
        if (cond) {                                                              \
            ++g_passed;                                                          \
        } else {                                                                 \
            ++g_failed;                                                          \
            std::printf("%s:%d: CHECK(%s) failed\n", __FILE__, __LINE__, #cond); \
        }                                                                        \
    } while (0)

#define CHECK_EQ(a, b)                                                                            \
    do {                                                                                          \
        const auto va_ = (a);                                                                     \
        const auto vb_ = (b);                                                                     \
        if (va_ == vb_) {                                                                         \
            ++g_passed;                                                                           \
        } else {                                                                                  \
            ++g_failed;                                                                           \
            std::printf("%s:%d: CHECK_EQ(%s, %s) failed: %s != %s\n", __FILE__, __LINE__, #a, #b, \
                        check_show(va_).c_str(), check_show(vb_).c_str());                        \
        }                                                                                         \
    } while (0)

inline int check_report() {
    std::printf("%d passed, %d failed\n", g_passed, g_failed);
    return g_failed == 0 ? 0 : 1;
}
