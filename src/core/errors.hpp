// Exceptions thrown by the core. The bindings translate each to its Python twin in
// django_fastcache.errors, once, in module.cpp.
#pragma once

#include <stdexcept>
#include <string>

namespace fastcache {

// Bytes that are not a valid value: corrupt, truncated or foreign.
struct DecodeError : std::runtime_error {
    using std::runtime_error::runtime_error;
};

// A wire-format version this build does not know.
struct UnknownFormatError : DecodeError {
    using DecodeError::DecodeError;
};

// A pickled body whose signature is missing or wrong.
struct SignatureError : DecodeError {
    using DecodeError::DecodeError;
};

}  // namespace fastcache
