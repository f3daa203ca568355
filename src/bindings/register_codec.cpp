// _core.Codec: the wire codec (Python value <-> bytes) as the Redis tier and tests use it.
#include <pybind11/pybind11.h>

#include "bindings/options.hpp"
#include "bindings/registry.hpp"
#include "bindings/values.hpp"

namespace py = pybind11;

namespace fastcache::bindings {

void register_codec(py::module_& m) {
    init_values();
    py::class_<CodecOptions>(m, "Codec")
        .def(py::init(&codec_options), py::kw_only(), py::arg("serializer") = "msgpack",
             py::arg("pickle") = "signed", py::arg("signing_key") = py::bytes(),
             py::arg("fallback_keys") = std::vector<py::bytes>(),
             py::arg("compress_min_bytes") = -1, py::arg("compressor") = "zlib",
             py::arg("compress_level") = 6, py::arg("pickle_protocol") = 5,
             py::arg("max_value_bytes") = static_cast<long long>(kDefaultMaxValueBytes),
             py::arg("max_value_objects") = static_cast<long long>(kDefaultMaxValueObjects))
        .def(
            "dumps", [](const CodecOptions& o, py::handle v) { return encode(v, o); },
            py::arg("value"))
        .def(
            "loads",
            [](const CodecOptions& o, py::buffer data) {
                py::buffer_info info = data.request();
                if (info.ndim != 1 || info.itemsize != 1) {
                    throw py::type_error("loads() takes bytes");
                }
                return decode(std::string_view(static_cast<const char*>(info.ptr),
                                               static_cast<std::size_t>(info.size)),
                              o);
            },
            py::arg("data"));
}

}  // namespace fastcache::bindings
