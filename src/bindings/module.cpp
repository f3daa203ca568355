// The private extension module django_fastcache._core: composes one register_<area>
// function per area and maps the core's C++ exceptions to the package's Python errors.
#include <pybind11/pybind11.h>

#include "bindings/registry.hpp"
#include "core/errors.hpp"

namespace py = pybind11;

PYBIND11_MODULE(_core, m) {
    m.doc() = "django-fastcache C++ core (private: use django_fastcache.cache and friends)";

    py::module_ errors = py::module_::import("django_fastcache.errors");
    // Static storage: the translator outlives this function and must not touch refcounts
    // at interpreter shutdown.
    static py::handle decode_error = py::object(errors.attr("DecodeError")).release();
    static py::handle unknown_format = py::object(errors.attr("UnknownFormatError")).release();
    static py::handle signature_error = py::object(errors.attr("SignatureError")).release();
    py::register_exception_translator([](std::exception_ptr p) {
        try {
            if (p) std::rethrow_exception(p);
        } catch (const fastcache::UnknownFormatError& e) {
            PyErr_SetString(unknown_format.ptr(), e.what());
        } catch (const fastcache::SignatureError& e) {
            PyErr_SetString(signature_error.ptr(), e.what());
        } catch (const fastcache::DecodeError& e) {
            PyErr_SetString(decode_error.ptr(), e.what());
        }
    });

    fastcache::bindings::register_codec(m);
    fastcache::bindings::register_cache(m);
    fastcache::bindings::register_log(m);
    fastcache::bindings::register_limiter(m);
    fastcache::bindings::register_orm(m);
}
