// Builds CodecOptions from the keyword arguments the Python layer passes (already
// validated there against the cache's OPTIONS; this only rejects impossible values).
#pragma once

#include <pybind11/pybind11.h>

#include <string>

#include "bindings/values.hpp"

namespace fastcache::bindings {

inline CodecOptions codec_options(const std::string& serializer, const std::string& pickle,
                                  const pybind11::bytes& signing_key, long long compress_min_bytes,
                                  int compress_level, int pickle_protocol,
                                  long long max_value_bytes) {
    CodecOptions o;
    if (serializer == "pickle") {
        o.pickle_only = true;
    } else if (serializer != "msgpack") {
        throw pybind11::value_error("serializer must be 'msgpack' or 'pickle', not '" + serializer + "'");
    }
    if (pickle == "signed") {
        o.pickle = PickleMode::Signed;
    } else if (pickle == "unsigned") {
        o.pickle = PickleMode::Unsigned;
    } else if (pickle == "forbid") {
        o.pickle = PickleMode::Forbid;
    } else {
        throw pybind11::value_error("pickle must be 'signed', 'unsigned' or 'forbid', not '" + pickle + "'");
    }
    if (o.pickle_only && o.pickle == PickleMode::Forbid) {
        throw pybind11::value_error("serializer 'pickle' cannot be used with pickle 'forbid'");
    }
    o.signing_key = signing_key;
    if (o.pickle == PickleMode::Signed && o.signing_key.empty()) {
        throw pybind11::value_error("pickle 'signed' needs a signing key");
    }
    if (compress_level < -1 || compress_level > 9) {
        throw pybind11::value_error("compress_level must be between -1 and 9");
    }
    if (max_value_bytes <= 0) throw pybind11::value_error("max_value_bytes must be positive");
    o.compress_min_bytes = compress_min_bytes;
    o.compress_level = compress_level;
    o.pickle_protocol = pickle_protocol;
    o.max_value_bytes = static_cast<std::size_t>(max_value_bytes);
    return o;
}

}  // namespace fastcache::bindings
